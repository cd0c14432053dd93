//! Plain TCP for either direction: refuses loops, connects to the chosen target and
//! forwards bytes, recording metrics and one log line per connection (inside the
//! connection's span, which names client and destination). The steps are also
//! offered one by one, so TLS can wrap either side.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::accept::ConnInfo;
use super::connect::connect;
use super::forward::{forward, ByteCounters};
use super::loop_guard::{LoopGuard, LoopReason};
use crate::telemetry::metrics::tcp::DirectionMetrics;

/// What a relay needs besides the connection; shared by all of a direction's
/// connections.
#[derive(Clone, Debug)]
pub(crate) struct Relay {
    /// Refuses connections that would come back into the proxy.
    pub loop_guard: LoopGuard,
    /// Time allowed for the upstream connect.
    pub connect_timeout: Duration,
    /// This direction's metric handles.
    pub metrics: DirectionMetrics,
    /// This direction's byte counters (the same counters, grouped for forwarding).
    pub counters: ByteCounters,
}

impl Relay {
    /// Builds a relay from a direction's metrics.
    pub(crate) fn new(
        loop_guard: LoopGuard,
        connect_timeout: Duration,
        metrics: DirectionMetrics,
    ) -> Self {
        let counters = ByteCounters {
            sent: metrics.sent_bytes.clone(),
            received: metrics.received_bytes.clone(),
        };
        Self {
            loop_guard,
            connect_timeout,
            metrics,
            counters,
        }
    }

    /// Relays `stream` to `target` until both sides are done.
    pub(crate) async fn relay(&self, stream: TcpStream, info: &ConnInfo, target: SocketAddr) {
        if let Some(upstream) = self.open(info, target).await {
            self.forward(stream, upstream).await;
        }
    }

    /// Refuses a loop, else connects to `target`; `None` (logged and counted) when
    /// the connection must be closed.
    pub(crate) async fn open(&self, info: &ConnInfo, target: SocketAddr) -> Option<TcpStream> {
        if self.is_loop(info, target) {
            return None;
        }
        self.connect(target).await
    }

    /// True (logged and counted) when connecting to `target` would come back into
    /// the proxy.
    pub(crate) fn is_loop(&self, info: &ConnInfo, target: SocketAddr) -> bool {
        let reason = self.loop_guard.check(info.local, info.orig_dst, target);
        self.refuses_loop(info, target, reason)
    }

    /// [`Relay::is_loop`] for a target known to be an address of this host.
    pub(crate) fn is_loop_to_local(&self, info: &ConnInfo, target: SocketAddr) -> bool {
        let reason = self
            .loop_guard
            .check_local(info.local, info.orig_dst, target);
        self.refuses_loop(info, target, reason)
    }

    fn refuses_loop(
        &self,
        info: &ConnInfo,
        target: SocketAddr,
        reason: Option<LoopReason>,
    ) -> bool {
        let Some(reason) = reason else {
            return false;
        };
        self.metrics.loops_refused.inc();
        tracing::warn!(
            %target,
            local = %info.local,
            reason = reason.as_str(),
            "refusing connection that would loop back into the proxy"
        );
        true
    }

    /// Connects to `target` within the connect timeout; `None` (logged and counted)
    /// on failure.
    pub(crate) async fn connect(&self, target: SocketAddr) -> Option<TcpStream> {
        tracing::debug!(%target, "connection opened");
        match connect(target, self.connect_timeout).await {
            Ok(upstream) => Some(upstream),
            Err(err) => {
                self.metrics.connect_failures.inc();
                tracing::info!(%target, error = %err, "upstream connect failed");
                None
            }
        }
    }

    /// Forwards between `downstream` and `upstream` (plain or TLS) until both
    /// sides are done, counting bytes and logging how it ended.
    pub(crate) async fn forward<D, U>(&self, downstream: D, upstream: U)
    where
        D: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        match forward(downstream, upstream, &self.counters).await {
            Ok(t) => tracing::debug!(
                sent = t.sent,
                received = t.received,
                duration_ms = elapsed_ms(started),
                "connection closed"
            ),
            Err(err) => tracing::debug!(
                sent = err.transferred.sent,
                received = err.transferred.received,
                duration_ms = elapsed_ms(started),
                error = %err.source,
                "connection closed with an error"
            ),
        }
    }
}

/// Milliseconds since `start`, saturating.
fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::tcp::TcpMetrics;
    use crate::telemetry::metrics::Direction;
    use crate::transport::accept::Accepted;
    use prometheus_client::registry::Registry;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A downstream connection as the accept layer would hand it up, plus the
    /// client's end of it.
    async fn accepted(
        metrics: &DirectionMetrics,
        orig_dst: Option<SocketAddr>,
    ) -> (Accepted, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let local = stream.local_addr().unwrap();
        let conn = Accepted {
            stream,
            client: peer,
            local,
            orig_dst: orig_dst.unwrap_or(local),
            guard: metrics.open_connection(),
            crowded: false,
        };
        (conn, client)
    }

    /// Relays an accepted connection as a stack would, its guard living as long.
    async fn relay_conn(r: &Relay, conn: Accepted, target: SocketAddr) {
        let (stream, info, _guard) = conn.split();
        r.relay(stream, &info, target).await;
    }

    fn relay(own_ports: &[u16]) -> Relay {
        let metrics = TcpMetrics::register(&mut Registry::default()).direction(Direction::Outbound);
        Relay::new(
            LoopGuard::new(own_ports.iter().copied()),
            Duration::from_secs(5),
            metrics,
        )
    }

    #[tokio::test]
    async fn forwards_to_the_target_and_counts() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = upstream.local_addr().unwrap();
        let r = relay(&[15001]);
        let (conn, mut client) = accepted(&r.metrics, Some(target)).await;
        let task = tokio::spawn({
            let r = r.clone();
            async move { relay_conn(&r, conn, target).await }
        });
        let (mut server, _) = upstream.accept().await.unwrap();
        client.write_all(b"abc").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abc");
        drop(server);
        task.await.unwrap();
        assert_eq!(r.metrics.sent_bytes.get(), 3);
        assert_eq!((r.metrics.opened.get(), r.metrics.closed.get()), (1, 1));
    }

    #[tokio::test]
    async fn refuses_a_loop_without_connecting() {
        let r = relay(&[15001]);
        // Not redirected: the original destination is the socket itself.
        let (conn, mut client) = accepted(&r.metrics, None).await;
        let target = conn.orig_dst;
        relay_conn(&r, conn, target).await;
        assert_eq!(r.metrics.loops_refused.get(), 1);
        assert_eq!(r.metrics.connect_failures.get(), 0);
        assert_eq!(r.metrics.closed.get(), 1);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn counts_a_failed_connect() {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let r = relay(&[15001]);
        let (conn, _client) = accepted(&r.metrics, Some(closed)).await;
        relay_conn(&r, conn, closed).await;
        assert_eq!(r.metrics.connect_failures.get(), 1);
        assert_eq!(r.metrics.loops_refused.get(), 0);
    }
}
