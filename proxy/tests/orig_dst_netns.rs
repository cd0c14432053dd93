//! Smoke test of the real binary against real netfilter redirects: the test
//! re-runs itself inside a fresh network and mount namespace (`unshare`), adds
//! test hosts and nat rules there only, and drives traffic through the proxy.
#![allow(clippy::unwrap_used)] // A test: a panic with its reason is the report.

use pillion_testkit::tcp::echo_on;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Set in the child's environment to tell the inner test it was started by the outer one.
const INNER_ENV: &str = "PILLION_PROXY_NETNS_SMOKE_INNER";
/// The outer test's network namespace, which the inner one must not be in.
const PARENT_NS_ENV: &str = "PILLION_PROXY_NETNS_SMOKE_PARENT_NS";

const V4_HOST: &str = "198.18.0.1";
const V6_HOST: &str = "2001:2::1";
const ECHO_PORT: u16 = 7000;
const APP_PORT: u16 = 8000;

#[test]
fn redirected_traffic_flows_through_the_proxy() {
    run_inner("inner_redirected_traffic_flows_through_the_proxy");
}

#[test]
fn a_namespace_without_ipv6_falls_back_to_ipv4() {
    run_inner("inner_a_namespace_without_ipv6_falls_back_to_ipv4");
}

/// Re-runs this test binary's `inner` test inside fresh network and mount
/// namespaces and asserts that it passed.
fn run_inner(inner: &str) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: needs root to create network namespaces");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .args([
            inner,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, env!("CARGO_BIN_EXE_pillion-proxy"))
        .env(
            PARENT_NS_ENV,
            current_netns().expect("own network namespace is readable"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by the harness on failure or with --nocapture.
    eprintln!("--- inner stdout\n{stdout}\n--- inner stderr\n{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner test {inner} failed ({})",
        out.status
    );
}

/// Kills the proxy by PID if the test ends early.
struct ProxyProcess(Option<Child>);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command that must succeed.
fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This process's network namespace, e.g. `net:[4026531833]`.
fn current_netns() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/net").ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// True only in a network namespace other than the outer test's: the guard
/// that keeps this test's addresses and rules out of the host.
fn in_private_netns() -> bool {
    match (current_netns(), std::env::var(PARENT_NS_ENV)) {
        (Some(ours), Ok(parent)) => !parent.is_empty() && ours != parent,
        _ => false,
    }
}

/// GET over HTTP/1.1; `None` while the server is not up.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    Some((status, raw.split_once("\r\n\r\n")?.1.to_owned()))
}

/// Sends a message through a redirected connection, half-closes, reads the echo.
async fn exchange(dst: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(dst).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// Connects and expects the proxy to close without a byte (FIN or RST).
async fn closed_without_answer(dst: SocketAddr) {
    let mut s = TcpStream::connect(dst).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .unwrap();
    match read {
        Ok(_) => assert!(got.is_empty()),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
}

/// The value of one sample line in the metrics text.
fn sample(text: &str, name: &str, direction: &str) -> u64 {
    let prefix = format!("{name}{{direction=\"{direction}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

/// Checks that this really is a private namespace, then stages the binary.
fn inner_setup() -> PathBuf {
    let Ok(bin) = std::env::var(INNER_ENV) else {
        panic!("started by an outer test through run_inner, not directly");
    };
    assert!(
        in_private_netns(),
        "refusing to run outside a private network namespace"
    );
    stage_binary(Path::new(&bin))
}

/// Sends SIGTERM and waits for a successful exit.
async fn terminate(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("proxy did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "proxy exited with {status}");
}

/// Waits until `/ready` answers 200.
async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((200, _)) = get(admin, "/ready").await {
            return;
        }
        assert!(Instant::now() < deadline, "proxy never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies the binary somewhere the unprivileged proxy user can execute it.
fn stage_binary(bin: &Path) -> PathBuf {
    // /run is a fresh tmpfs in this private mount namespace.
    run(
        "mount",
        &["-t", "tmpfs", "-o", "mode=0755", "pillion-smoke", "/run"],
    );
    let dst = PathBuf::from("/run/pillion-proxy");
    std::fs::copy(bin, &dst).unwrap();
    run("chmod", &["0755", "/run/pillion-proxy"]);
    dst
}

#[tokio::test]
#[ignore = "started by redirected_traffic_flows_through_the_proxy inside a fresh namespace"]
async fn inner_redirected_traffic_flows_through_the_proxy() {
    let bin = inner_setup();
    let uid = pillion_api::defaults::PROXY_UID.to_string();
    let gid = pillion_api::defaults::PROXY_GID.to_string();
    let outbound_port = pillion_api::defaults::OUTBOUND_PORT.to_string();
    let inbound_port = pillion_api::defaults::INBOUND_PORT.to_string();

    // Test hosts live on this namespace's own loopback device.
    run("ip", &["link", "set", "lo", "up"]);
    run(
        "ip",
        &["addr", "add", &format!("{V4_HOST}/32"), "dev", "lo"],
    );
    let v6 = Command::new("ip")
        .args(["-6", "addr", "add", &format!("{V6_HOST}/128"), "dev", "lo"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let redirect = |tool: &str, host: &str, port: u16, to: &str| {
        let rule = format!(
            "-t nat -A OUTPUT -p tcp -d {host} --dport {port} \
             -m owner ! --uid-owner {uid} -j REDIRECT --to-ports {to}"
        );
        run(tool, &rule.split_whitespace().collect::<Vec<_>>());
    };
    redirect("iptables", V4_HOST, ECHO_PORT, &outbound_port);
    redirect("iptables", V4_HOST, APP_PORT, &inbound_port);
    if v6 {
        redirect("ip6tables", V6_HOST, ECHO_PORT, &outbound_port);
    }

    let v4_echo: SocketAddr = format!("{V4_HOST}:{ECHO_PORT}").parse().unwrap();
    let v6_echo: SocketAddr = format!("[{V6_HOST}]:{ECHO_PORT}").parse().unwrap();
    echo_on(v4_echo).await;
    if v6 {
        echo_on(v6_echo).await;
    }
    // The "local application", at the pod's own address (not loopback), where the
    // inbound side must reach it.
    echo_on(format!("{V4_HOST}:{APP_PORT}").parse().unwrap()).await;

    let admin: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    let mut proxy = ProxyProcess(Some(
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
            ])
            .arg(&bin)
            .args([
                "--admin-addr",
                &admin.to_string(),
                "--log-level",
                "debug",
                "--drain-timeout",
                "5s",
            ])
            .spawn()
            .unwrap(),
    ));
    wait_ready(admin).await;

    // Outbound, IPv4: the client (root) is redirected, the proxy (uid 2580) is not.
    let big = vec![b'x'; 100_000];
    assert_eq!(exchange(v4_echo, &big).await, big);
    // Outbound, IPv6.
    if v6 {
        assert_eq!(exchange(v6_echo, b"over ipv6").await, b"over ipv6");
    }
    // Inbound: the address and port the caller aimed at.
    let app_via_pod: SocketAddr = format!("{V4_HOST}:{APP_PORT}").parse().unwrap();
    assert_eq!(exchange(app_via_pod, b"inbound").await, b"inbound");
    // Straight into the outbound port: nobody redirected it, a loop.
    let direct = format!("127.0.0.1:{outbound_port}").parse().unwrap();
    closed_without_answer(direct).await;

    let expected_out = if v6 { 2 } else { 1 };
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, text) = get(admin, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        if sample(&text, "pillion_tcp_connections_closed_total", "outbound") == expected_out + 1
            && sample(&text, "pillion_tcp_connections_closed_total", "inbound") == 1
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "connections never closed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v6_bytes = if v6 { 9 } else { 0 };
    assert_eq!(
        sample(&text, "pillion_tcp_connections_opened_total", "outbound"),
        expected_out + 1
    );
    assert_eq!(sample(&text, "pillion_tcp_connections_open", "outbound"), 0);
    assert_eq!(
        sample(&text, "pillion_tcp_sent_bytes_total", "outbound"),
        100_000 + v6_bytes
    );
    assert_eq!(
        sample(&text, "pillion_tcp_received_bytes_total", "outbound"),
        100_000 + v6_bytes
    );
    assert_eq!(
        sample(&text, "pillion_tcp_loops_refused_total", "outbound"),
        1
    );
    assert_eq!(
        sample(&text, "pillion_tcp_connect_failures_total", "outbound"),
        0
    );
    assert_eq!(sample(&text, "pillion_tcp_sent_bytes_total", "inbound"), 7);
    assert_eq!(
        sample(&text, "pillion_tcp_received_bytes_total", "inbound"),
        7
    );

    // SIGTERM: listeners close, the drain finishes, exit 0.
    terminate(proxy.0.take().unwrap()).await;
}

#[tokio::test]
#[ignore = "started by a_namespace_without_ipv6_falls_back_to_ipv4 inside a fresh namespace"]
async fn inner_a_namespace_without_ipv6_falls_back_to_ipv4() {
    let bin = inner_setup();
    run("ip", &["link", "set", "lo", "up"]);
    // Per-namespace sysctls: this removes ::1 here only.
    for scope in ["all", "default", "lo"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1").unwrap();
    }
    let admin: SocketAddr = "127.0.0.1:15020".parse().unwrap();
    let log = "/run/proxy.log";
    let mut proxy = ProxyProcess(Some(
        Command::new(&bin)
            .args(["--admin-addr", &admin.to_string()])
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    ));
    wait_ready(admin).await;
    terminate(proxy.0.take().unwrap()).await;
    let text = std::fs::read_to_string(log).unwrap();
    eprintln!("{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("IPv6 is unavailable") && l.contains("--outbound-addrs")),
        "no IPv6 fallback warning in\n{text}"
    );
    assert!(text.contains("pillion-proxy listening"));
}
