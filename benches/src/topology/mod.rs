//! The production topology in private namespaces, once per run, with every row side by
//! side: plain `client`/`server` pods (direct, and the nginx and HAProxy pairs, which
//! need no redirects), meshed `mclient`/`mserver` pods (the Pillion pair, whose
//! iptables redirects would capture the peers' traffic too), and the `agent` pod.
//!
//! ```text
//!  client ──────────────────────────────────────────────▶ server :8080/:9000   direct
//!  client → 127.0.0.1 nginx ══ TLS 1.3 + client cert ══▶ nginx → 127.0.0.1    nginx pair
//!  client → 127.0.0.1 haproxy ═ TLS 1.3 + client cert ═▶ haproxy → 127.0.0.1  HAProxy pair
//!  mclient ─(redirect)→ proxy ══ mesh (m)TLS ══▶ proxy ─→ mserver app         Pillion pair
//! ```

mod peers;
pub(crate) mod pillion;
pub(crate) mod pods;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pillion_tests::{Pod, Process, Task, World};

pub use peers::{example_values, Peer, TEMPLATES};
pub use pillion::{PillionPair, Prepared, ViewControl};

use crate::certs::Certs;
use crate::pin::{pin_process_tree, Layout};
use crate::server::{HTTP_PORT, SINK_PORT};
use crate::workdir::WorkDir;

/// The kind of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No proxy: the physical limit.
    Direct,
    /// The Pillion pair.
    Pillion,
    /// A second Pillion pair running a baseline proxy binary, for before/after in one run.
    PillionBaseline,
    /// A peer proxy pair.
    Peer(Peer),
}

/// One row of the comparison: where its client sits, what it dials, which processes
/// are its proxies.
#[derive(Debug, Clone)]
pub struct Contender {
    /// What kind of row.
    pub kind: Kind,
    /// Name in the report (Pillion's is settled after the run).
    pub name: String,
    /// The pod the load generator runs in.
    pub client: Pod,
    /// Target of the HTTP/1.1 figures.
    pub h1: SocketAddr,
    /// Target of the HTTP/2 figure, or why there is none.
    pub h2: std::result::Result<SocketAddr, String>,
    /// Target of the bulk TCP figure.
    pub bulk: SocketAddr,
    /// PIDs of the proxy processes (both sides); empty for direct.
    pub proxies: Vec<u32>,
    /// PID of the server pod's proxy, the one a flood at the service meets (Pillion
    /// rows only: the peers' server sides listen for TLS on ports of their own).
    pub server_proxy: Option<u32>,
    /// How the client reaches the service, for the report.
    pub path: String,
    /// Makes the row's agent push a larger view (Pillion rows with an agent).
    pub view: Option<ViewControl>,
}

/// What the topology is built from.
#[derive(Debug, Clone)]
pub struct TopologyOpts {
    /// The multicall binary (this program) for init, proxy and agent.
    pub binary: PathBuf,
    /// Tokio worker threads per Pillion proxy (nginx and HAProxy get one worker each).
    pub workers: usize,
    /// CPU pinning.
    pub layout: Layout,
    /// Log filter of the Pillion proxies and the agent.
    pub log_level: String,
    /// The shipped proxy binary, if the Pillion pair should run it.
    pub proxy_binary: Option<PathBuf>,
    /// A second Pillion pair with this proxy binary (e.g. the build before a change).
    pub baseline_proxy_binary: Option<PathBuf>,
    /// Extra environment of the Pillion pair's proxies only (e.g. `GLIBC_TUNABLES`).
    pub proxy_env: Vec<(String, String)>,
    /// Extra environment of the baseline pair's proxies only.
    pub baseline_proxy_env: Vec<(String, String)>,
    /// Whether to start the nginx and HAProxy pairs too.
    pub peers: bool,
}

/// Everything running for one benchmark; dropping it stops it all, the world last.
#[derive(Debug)]
pub struct Topology {
    /// The rows, in report order.
    pub contenders: Vec<Contender>,
    /// The Pillion pair (its metrics tell whether the hop was mesh TLS).
    pub pillion: PillionPair,
    /// The baseline Pillion pair, when asked for.
    pub baseline: Option<PillionPair>,
    /// An unmeshed pod (the peers' and direct's client pod) a flood comes from: its
    /// connections reach a Pillion server pod's inbound proxy without a client proxy.
    pub flood_from: Pod,
    _peers: Vec<Process>,
    _servers: Vec<Task<()>>,
    _world: World,
}

impl Topology {
    /// Builds the world, the pods, the servers and every proxy pair.
    pub fn build(opts: &TopologyOpts, certs: &Certs, work: &WorkDir) -> Result<Topology> {
        let world = World::new("bench")?;
        let client = world.pod("client")?;
        let server = world.pod("server")?;
        let mclient = world.pod("mclient")?;
        let mserver = world.pod("mserver")?;
        let agent = world.pod("agent")?;
        for pod in [&client, &server, &mclient, &mserver] {
            pods::tune(pod)?;
        }
        let (ccpu, scpu) = (opts.layout.client, opts.layout.server);
        let mut servers = vec![
            pods::start_server(&server, scpu)?,
            pods::start_server(&mserver, scpu)?,
        ];
        eprintln!("set-up: pods and servers up; starting the Pillion pair");
        let pair_opts = pillion::PairOpts {
            binary: opts.binary.clone(),
            workers: opts.workers,
            log_level: opts.log_level.clone(),
            proxy_binary: opts.proxy_binary.clone(),
            env: opts.proxy_env.clone(),
            tag: "pillion",
            http_routes: String::new(),
            extra_workloads: String::new(),
        };
        let pair = pillion::start(&pair_opts, &mclient, &mserver, &agent, certs, work)?;
        pin_process_tree(pair.client.proxy().pid(), ccpu)?;
        pin_process_tree(pair.server.proxy().pid(), scpu)?;
        // The agent works on the server's CPU: the client's (load generator and its
        // proxy) then measures the proxy's share of a push, not the agent's parse.
        if let Some(agent) = &pair.agent {
            pin_process_tree(agent.pid(), scpu)?;
        }
        let baseline = match &opts.baseline_proxy_binary {
            None => None,
            Some(binary) => {
                eprintln!(
                    "set-up: starting the baseline Pillion pair ({})",
                    binary.display()
                );
                let (bclient, bserver, bagent) = (
                    world.pod("bclient")?,
                    world.pod("bserver")?,
                    world.pod("bagent")?,
                );
                pods::tune(&bclient)?;
                pods::tune(&bserver)?;
                servers.push(pods::start_server(&bserver, scpu)?);
                let opts = pillion::PairOpts {
                    proxy_binary: Some(binary.clone()),
                    env: opts.baseline_proxy_env.clone(),
                    tag: "baseline",
                    ..pair_opts.clone()
                };
                let pair = pillion::start(&opts, &bclient, &bserver, &bagent, certs, work)?;
                pin_process_tree(pair.client.proxy().pid(), ccpu)?;
                pin_process_tree(pair.server.proxy().pid(), scpu)?;
                if let Some(agent) = &pair.agent {
                    pin_process_tree(agent.pid(), scpu)?;
                }
                Some((pair, bclient, bserver))
            }
        };

        let mut peers = Vec::new();
        let mut contenders = vec![Contender {
            kind: Kind::Direct,
            name: "direct".into(),
            client: client.clone(),
            h1: SocketAddr::new(server.ipv4(), HTTP_PORT),
            h2: Ok(SocketAddr::new(server.ipv4(), HTTP_PORT)),
            bulk: SocketAddr::new(server.ipv4(), SINK_PORT),
            proxies: Vec::new(),
            server_proxy: None,
            path: format!(
                "client pod → {}:{HTTP_PORT} (TCP: :{SINK_PORT}) in the server pod; no proxy",
                server.ipv4()
            ),
            view: None,
        }];
        contenders.push(pillion_row(
            Kind::Pillion,
            "Pillion",
            &pair,
            &mclient,
            &mserver,
        ));
        let baseline = baseline.map(|(pair, bclient, bserver)| {
            contenders.push(pillion_row(
                Kind::PillionBaseline,
                "Pillion baseline",
                &pair,
                &bclient,
                &bserver,
            ));
            pair
        });
        let peer_kinds: &[Peer] = if opts.peers {
            &[Peer::Nginx, Peer::Haproxy]
        } else {
            &[]
        };
        for &peer in peer_kinds {
            eprintln!("set-up: starting the {} pair", peer.name());
            let out = peers::start(peer, &client, server.ipv4(), &certs.client, certs, work)?;
            let inb = peers::start(peer, &server, client.ipv4(), &certs.server, certs, work)?;
            pin_process_tree(out.pid(), ccpu)?;
            pin_process_tree(inb.pid(), scpu)?;
            let p = peer.ports();
            let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
            contenders.push(Contender {
                kind: Kind::Peer(peer),
                name: format!("{} (mTLS)", peer.name()),
                client: client.clone(),
                h1: local(p.h1),
                h2: Ok(local(p.h2)),
                bulk: local(p.tcp),
                proxies: vec![out.pid(), inb.pid()],
                server_proxy: None,
                view: None,
                path: format!(
                    "client pod → 127.0.0.1:{} (h2c: :{}, TCP: :{}) of its own {name}, \
                     TLS 1.3 with client certificates to the server pod's {name} on \
                     {}:{} (TCP: :{}), then 127.0.0.1:{HTTP_PORT} (:{SINK_PORT})",
                    p.h1,
                    p.h2,
                    p.tcp,
                    server.ipv4(),
                    p.mesh_http,
                    p.mesh_tcp,
                    name = peer.name()
                ),
            });
            peers.push(out);
            peers.push(inb);
        }
        for c in &contenders {
            check_target(c.h1)?;
            check_target(c.bulk)?;
        }
        Ok(Topology {
            contenders,
            pillion: pair,
            baseline,
            flood_from: client,
            _peers: peers,
            _servers: servers,
            _world: world,
        })
    }
}

/// The row of a Pillion pair whose client is `client` and server `server`.
fn pillion_row(
    kind: Kind,
    name: &str,
    pair: &PillionPair,
    client: &Pod,
    server: &Pod,
) -> Contender {
    Contender {
        kind,
        name: name.into(),
        client: client.clone(),
        h1: pillion::service_addr(server, HTTP_PORT),
        h2: Ok(pillion::service_addr(server, HTTP_PORT)),
        bulk: pillion::service_addr(server, SINK_PORT),
        proxies: pillion::pids(pair),
        server_proxy: Some(pair.server.proxy().pid()),
        path: format!(
            "client pod dials the server pod's {}:{HTTP_PORT} (TCP: :{SINK_PORT}) as if \
             direct; iptables redirects it to its proxy, which carries it over the mesh \
             hop to the server pod's proxy (redirected inbound), then to the app",
            server.ipv4()
        ),
        view: pair.view.clone(),
    }
}

/// Refuses any target outside loopback and the bench ranges (a guard against ever
/// aiming load elsewhere).
pub fn check_target(addr: SocketAddr) -> Result<()> {
    let ip = addr.ip();
    if ip.is_loopback() || pillion::in_bench_range(ip) {
        return Ok(());
    }
    bail!("refusing to load {addr}: only loopback and 198.18.0.0/15 / 2001:2::/48")
}

/// The label of a Pillion row (`name`), from what its proxy's metrics say it did.
pub fn pillion_label(name: &str, pair: &PillionPair) -> Result<(String, Option<String>)> {
    let (tls, plain) = pillion::mesh_counts(pair).context("reading the mesh counters")?;
    Ok(if tls > 0.0 && plain == 0.0 {
        (format!("{name} (mTLS)"), None)
    } else if tls == 0.0 {
        (
            format!("{name} (plain L4)"),
            Some(format!(
                "the Pillion proxies carried every connection as plain TCP \
                 (pillion_tls_connections_total = 0, {plain} passthroughs)"
            )),
        )
    } else {
        (
            format!("{name} (mixed mTLS / plain)"),
            Some(format!(
                "the client proxy took mesh TLS for {tls} connections and passed {plain} through in plain TCP"
            )),
        )
    })
}
