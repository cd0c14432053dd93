//! The installed rules really steer packets: connections from inside a fresh network
//! namespace land on listeners at the proxy's ports, with the original destination
//! readable through `SO_ORIGINAL_DST`, and every exemption really bypasses the proxy.
//! Test hosts live behind a veth link (198.18.0.0/24, 2001:2::/64) that nobody answers on,
//! and behind a veth pair into a second namespace the test makes for inbound traffic.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{init_ok, run, sh};
use pillion_api::defaults;
use socket2::SockRef;

/// How long a connection that should not be redirected is given to (wrongly) arrive.
const NOT_REDIRECTED_WAIT: Duration = Duration::from_millis(400);

fn listen(addr: &str) -> TcpListener {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    listener.set_nonblocking(true).unwrap();
    listener
}

fn accept_within(listener: &TcpListener, wait: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn original_dst(stream: &TcpStream) -> SocketAddr {
    let socket = SockRef::from(stream);
    let addr = if stream.local_addr().unwrap().is_ipv4() {
        socket.original_dst()
    } else {
        socket.original_dst_ipv6()
    };
    addr.unwrap().as_socket().unwrap()
}

/// Connects as this (root) process; true when the handshake completed.
fn connects(target: &str) -> bool {
    let addr: SocketAddr = target.parse().unwrap();
    TcpStream::connect_timeout(&addr, NOT_REDIRECTED_WAIT).is_ok()
}

/// Connects from a child process running as `uid`/`gid`, through bash's `/dev/tcp`.
fn connects_as(uid: u32, host: &str, port: u16) -> bool {
    Command::new("timeout")
        .args([
            "1",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{host}/{port}"),
        ])
        .uid(uid)
        .gid(uid)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn assert_redirected(listener: &TcpListener, want: &str) {
    let stream = accept_within(listener, Duration::from_secs(2))
        .unwrap_or_else(|| panic!("connection to {want} did not reach the proxy port"));
    assert_eq!(original_dst(&stream), want.parse::<SocketAddr>().unwrap());
}

fn assert_untouched(listener: &TcpListener, what: &str) {
    assert!(
        accept_within(listener, Duration::ZERO).is_none(),
        "{what} was redirected to the proxy"
    );
}

/// A second network namespace, made from inside the test's own fresh one, that plays a
/// client elsewhere in the cluster. Killed (by its own pid) on drop.
struct Peer {
    child: Child,
}

impl Peer {
    fn start() -> Peer {
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "60"])
            .spawn()
            .unwrap();
        let peer = Peer { child };
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let theirs = format!("/proc/{}/ns/net", peer.child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(&theirs).ok().as_ref() == Some(&ours) {
            assert!(Instant::now() < deadline, "peer namespace never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        peer
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects from inside the peer namespace.
    fn connects(&self, host: &str, port: u16) -> bool {
        run(Command::new("nsenter")
            .args(["--target", &self.pid().to_string(), "--net", "--"])
            .args(["timeout", "5", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{host}/{port}")))
        .code
            == 0
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

netns_test! {
    /// Outbound TCP of both families reaches the outbound port, except the proxy's own,
    /// loopback, skipped ports and skipped networks; inbound TCP reaches the inbound
    /// port except on skipped ports.
    fn redirect_really_intercepts() {
        // A veth pair whose far end has no addresses: a sink nobody answers from.
        sh("set -e
            ip link add pillion0 type veth peer name pillion0-sink
            ip link set pillion0-sink up
            ip link set pillion0 up
            ip addr add 198.18.0.1/24 dev pillion0
            ip -6 addr add 2001:2::1/64 dev pillion0 nodad");
        init_ok(&[
            "--backend", "nft",
            "--skip-outbound-ports", "9999",
            "--skip-outbound-cidrs", "198.18.0.128/25,2001:2:0:0:8000::/65",
        ]);
        let out4 = listen(defaults::OUTBOUND_ADDR_V4);
        let out6 = listen(defaults::OUTBOUND_ADDR_V6);
        let inbound = listen(defaults::INBOUND_ADDR_V4);
        let admin = listen(defaults::ADMIN_ADDR);

        // Outbound, both families, original destination preserved.
        assert!(connects("198.18.0.9:80"));
        assert_redirected(&out4, "198.18.0.9:80");
        assert!(connects("[2001:2::9]:443"));
        assert_redirected(&out6, "[2001:2::9]:443");

        // Any uid but the proxy's is redirected; the proxy's own traffic is not.
        assert!(connects_as(defaults::PROXY_UID + 1, "198.18.0.9", 8080));
        assert_redirected(&out4, "198.18.0.9:8080");
        assert!(!connects_as(defaults::PROXY_UID, "198.18.0.9", 8080));
        assert_untouched(&out4, "the proxy uid's connection");

        // Skipped ports and networks go straight out (and into the void).
        assert!(!connects("198.18.0.9:9999"));
        assert_untouched(&out4, "a skipped port");
        assert!(!connects("198.18.0.200:80"));
        assert_untouched(&out4, "a skipped IPv4 network");
        assert!(!connects("[2001:2::8000:0:0:9]:80"));
        assert_untouched(&out6, "a skipped IPv6 network");

        // The app talking to itself, on loopback or on its own pod IP, stays direct.
        let local = listen("127.0.0.1:18080");
        let pod_ip = listen("198.18.0.1:18081");
        assert!(connects("127.0.0.1:18080"));
        assert!(accept_within(&local, Duration::from_secs(2)).is_some());
        assert!(connects("198.18.0.1:18081"));
        assert!(accept_within(&pod_ip, Duration::from_secs(2)).is_some());
        assert_untouched(&out4, "loopback traffic");

        // Inbound from another namespace over a veth pair.
        let peer = Peer::start();
        sh(&format!(
            "set -e
             ip link add pillion-v0 type veth peer name pillion-v1 netns {pid}
             ip addr add 198.18.1.1/24 dev pillion-v0
             ip link set pillion-v0 up
             nsenter --target {pid} --net -- sh -c '
               ip link set lo up
               ip addr add 198.18.1.2/24 dev pillion-v1
               ip link set pillion-v1 up'",
            pid = peer.pid()
        ));
        assert!(peer.connects("198.18.1.1", 8080));
        assert_redirected(&inbound, "198.18.1.1:8080");
        assert!(peer.connects("198.18.1.1", defaults::ADMIN_PORT));
        assert!(accept_within(&admin, Duration::from_secs(2)).is_some());
        assert_untouched(&inbound, "a skipped inbound port");

        // After cleanup nothing is intercepted any more.
        init_ok(&["--backend", "nft", "--cleanup"]);
        assert!(!connects("198.18.0.9:80"));
        assert_untouched(&out4, "traffic after cleanup");
        assert!(!peer.connects("198.18.1.1", 8080), "nothing listens on 8080 itself");
        assert_untouched(&inbound, "inbound traffic after cleanup");
    }
}
