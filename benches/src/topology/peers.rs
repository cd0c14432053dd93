//! The peer proxies: an nginx pair and an HAProxy pair, each pod running one sidecar
//! rendered from `benches/configs/*.tmpl` with that pod's certificate and its peer's
//! address, in the foreground (`nginx -g 'daemon off;'`, `haproxy -db`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};
use pillion_tests::{Cmd, Pod, Process};

use super::pods::wait_listening;
use crate::certs::{Certs, Leaf};
use crate::install::NGINX_STREAM_MODULE;
use crate::server::{HTTP_PORT, SINK_PORT};
use crate::template::render;
use crate::workdir::WorkDir;

/// The shipped templates, by file name.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "nginx.conf.tmpl",
        include_str!("../../configs/nginx.conf.tmpl"),
    ),
    (
        "haproxy.cfg.tmpl",
        include_str!("../../configs/haproxy.cfg.tmpl"),
    ),
];

/// Which peer proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// nginx (HTTP and stream modules).
    Nginx,
    /// HAProxy.
    Haproxy,
}

/// Where a peer pair listens (the ports the templates hard-code).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Outbound HTTP/1.1, on the client pod's loopback.
    pub h1: u16,
    /// Outbound h2c (prior knowledge), on the client pod's loopback.
    pub h2: u16,
    /// Outbound opaque TCP, on the client pod's loopback.
    pub tcp: u16,
    /// Inbound mesh TLS for HTTP.
    pub mesh_http: u16,
    /// Inbound mesh TLS for TCP.
    pub mesh_tcp: u16,
}

impl Peer {
    /// The ports of this peer's templates.
    pub fn ports(self) -> Ports {
        match self {
            Peer::Nginx => Ports {
                h1: 18080,
                h2: 18082,
                tcp: 19000,
                mesh_http: 18443,
                mesh_tcp: 19443,
            },
            Peer::Haproxy => Ports {
                h1: 28080,
                h2: 28082,
                tcp: 29000,
                mesh_http: 28443,
                mesh_tcp: 29443,
            },
        }
    }

    /// The product's name.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Nginx => "nginx",
            Peer::Haproxy => "HAProxy",
        }
    }

    fn template(self) -> &'static str {
        match self {
            Peer::Nginx => TEMPLATES[0].1,
            Peer::Haproxy => TEMPLATES[1].1,
        }
    }
}

/// The values a pod's config is rendered with.
fn values(
    peer: Peer,
    prefix: &Path,
    remote: IpAddr,
    leaf: &Leaf,
    ca: &Path,
) -> Vec<(&'static str, String)> {
    let p = |path: &Path| path.display().to_string();
    let mut v = vec![
        ("peer", remote.to_string()),
        ("ca", p(ca)),
        ("app_http", HTTP_PORT.to_string()),
        ("app_sink", SINK_PORT.to_string()),
    ];
    match peer {
        Peer::Nginx => v.extend([
            ("stream_module", NGINX_STREAM_MODULE.to_string()),
            ("prefix", p(prefix)),
            ("cert", p(&leaf.cert)),
            ("key", p(&leaf.key)),
        ]),
        Peer::Haproxy => v.push(("crt", p(&leaf.combined))),
    }
    v
}

/// Values for rendering a template in tests, without any files.
pub fn example_values(template: &str) -> Vec<(&'static str, String)> {
    let leaf = Leaf {
        id: pillion_identity::SpiffeId::new("cluster.local", "bench", "x").expect("valid id"),
        cert: "/c.pem".into(),
        key: "/k.pem".into(),
        combined: "/ck.pem".into(),
    };
    let peer = if template.starts_with("nginx") {
        Peer::Nginx
    } else {
        Peer::Haproxy
    };
    values(
        peer,
        Path::new("/p"),
        IpAddr::from([198, 18, 0, 3]),
        &leaf,
        Path::new("/ca.pem"),
    )
}

/// Renders, checks and starts `peer` in `pod`, talking to `remote` with `leaf`, and
/// waits until its listeners are up.
pub fn start(
    peer: Peer,
    pod: &Pod,
    remote: IpAddr,
    leaf: &Leaf,
    certs: &Certs,
    work: &WorkDir,
) -> Result<Process> {
    let name = peer.name().to_lowercase();
    let prefix = work.subdir(&format!("{name}-{}", pod.name()))?;
    let config = render(
        peer.template(),
        &values(peer, &prefix, remote, leaf, &certs.bundle),
    )
    .with_context(|| format!("rendering the {} template", peer.name()))?;
    let file = if peer == Peer::Nginx {
        "nginx.conf"
    } else {
        "haproxy.cfg"
    };
    let path = work.write(&format!("{name}-{}/{file}", pod.name()), &config)?;
    let (check, run) = match peer {
        Peer::Nginx => {
            let base = |c: Cmd| {
                c.arg("-p")
                    .arg(&prefix)
                    .arg("-e")
                    .arg(prefix.join("error.log"))
                    .arg("-c")
                    .arg(&path)
            };
            (
                base(Cmd::new("nginx")).arg("-t").arg("-q"),
                base(Cmd::new("nginx")).args(["-g", "daemon off;"]),
            )
        }
        Peer::Haproxy => (
            Cmd::new("haproxy").arg("-c").arg("-q").arg("-f").arg(&path),
            Cmd::new("haproxy").arg("-db").arg("-f").arg(&path),
        ),
    };
    let out = pod.exec_cmd(&check, std::time::Duration::from_secs(30))?;
    pillion_tests::process::output_ok(
        out,
        &format!("checking the {} config {}", peer.name(), path.display()),
    )?;
    let process = pod.spawn(run)?;
    let ports = peer.ports();
    for port in [
        ports.h1,
        ports.h2,
        ports.tcp,
        ports.mesh_http,
        ports.mesh_tcp,
    ] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(pod, addr, peer.name(), &process)?;
    }
    Ok(process)
}
