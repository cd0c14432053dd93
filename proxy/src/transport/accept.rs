//! The bottom layer of both stacks: accepts connections until the drain starts,
//! refuses those past the connection budget ([`Budget`]), reads each one's
//! original destination and hands it to a direction's stack as
//! a tracked, force-closable task inside a span of its own (`direction`, `client`,
//! `orig_dst`, and `peer_identity` once mesh TLS proves one), so no log line of the
//! connection repeats them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::budget::{Budget, CROWDED_FIRST_BYTES};
use super::drain::Drain;
use super::orig_dst::OrigDstLookup;
use super::sockopt;
use crate::telemetry::metrics::tcp::{DirectionMetrics, OpenConnection};
use crate::telemetry::metrics::Direction;

/// Pause after an accept error that signals resource exhaustion (EMFILE, ...),
/// so the loop does not spin while nothing can be accepted.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted in a row before the loop lets every other task run once: a
/// burst of new connections waits in the kernel's backlog, not in the run queue in
/// front of requests already in flight.
const ACCEPT_BURST: u32 = 16;

/// An accepted connection with what every layer above needs to know about it.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The downstream socket.
    pub stream: TcpStream,
    /// The downstream peer's address.
    pub client: SocketAddr,
    /// The address the connection arrived on (the listener's side).
    pub local: SocketAddr,
    /// Where the connection was going before the redirect; equal to `local`
    /// when the kernel has no redirect record.
    pub orig_dst: SocketAddr,
    /// Keeps the open/closed metrics right for as long as the connection lives.
    pub guard: OpenConnection,
    /// Accepted while the connection budget was crowded (a flood, most likely).
    pub crowded: bool,
}

/// The addresses of one connection: what logs and the loop guard need once the
/// socket itself has been handed to a protocol layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnInfo {
    /// The downstream peer's address.
    pub client: SocketAddr,
    /// The address the connection arrived on.
    pub local: SocketAddr,
    /// Where the connection was going before the redirect.
    pub orig_dst: SocketAddr,
    /// Accepted while the connection budget was crowded: it gets no more than
    /// [`CROWDED_FIRST_BYTES`] to show its first bytes.
    pub crowded: bool,
}

impl ConnInfo {
    /// How long the connection gets to show its first bytes (or its request head):
    /// `normal`, but no more than [`CROWDED_FIRST_BYTES`] if it came while the
    /// budget was crowded, as Envoy's overload manager shortens its timeouts under
    /// pressure.
    pub(crate) fn first_bytes_within(&self, normal: Duration) -> Duration {
        if self.crowded {
            normal.min(CROWDED_FIRST_BYTES)
        } else {
            normal
        }
    }
}

impl Accepted {
    /// Splits the connection into its socket, its addresses and the guard that
    /// must live as long as the connection is handled.
    pub(crate) fn split(self) -> (TcpStream, ConnInfo, OpenConnection) {
        let info = ConnInfo {
            client: self.client,
            local: self.local,
            orig_dst: self.orig_dst,
            crowded: self.crowded,
        };
        (self.stream, info, self.guard)
    }
}

/// One direction's stack above the accept layer.
pub(crate) trait Stack: Send + Sync + 'static {
    /// Which listener this stack serves (for metrics and logs).
    fn direction(&self) -> Direction;

    /// Handles one connection to its end.
    fn serve(&self, conn: Accepted) -> impl Future<Output = ()> + Send;
}

/// Everything the accept loop of one listener needs.
pub(crate) struct AcceptLoop<S> {
    /// The bound listener; dropped (closed) when the loop ends.
    pub listener: TcpListener,
    /// The stack that serves accepted connections.
    pub stack: Arc<S>,
    /// Finds each connection's original destination.
    pub orig_dst: Arc<dyn OrigDstLookup>,
    /// This direction's metric handles.
    pub metrics: DirectionMetrics,
    /// Stops the loop and tracks the spawned connections.
    pub drain: Drain,
    /// The connection budget every listener of the proxy shares.
    pub budget: Arc<Budget>,
}

impl<S: Stack> AcceptLoop<S> {
    /// Accepts until the drain starts, then drops the listener so new
    /// connections are refused.
    pub(crate) async fn run(self) {
        let direction = self.stack.direction();
        let listener = self
            .listener
            .local_addr()
            .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
        let mut in_a_row = 0;
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.drain.started() => break,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, client)) => {
                    self.dispatch(stream, client);
                    in_a_row += 1;
                    if in_a_row == ACCEPT_BURST {
                        in_a_row = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Err(err) => {
                    tracing::warn!(%direction, error = %err, "accept failed");
                    if is_resource_exhaustion(&err) {
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            }
        }
        tracing::info!(%direction, %listener, "listener closed");
    }

    /// Reads the connection's addresses and spawns its stack as a tracked task.
    fn dispatch(&self, stream: TcpStream, client: SocketAddr) {
        let direction = self.stack.direction();
        let permit = match self.budget.try_acquire() {
            Some(permit) => permit,
            None => match self.budget.take_from_silent() {
                Some(permit) => {
                    self.metrics.evicted.inc();
                    permit
                }
                None => {
                    // Closed at once: refusing new work keeps the open connections'
                    // descriptors.
                    self.metrics.over_budget.inc();
                    if self.budget.should_warn() {
                        tracing::warn!(%direction, limit = self.budget.limit(),
                            "connection budget spent; refusing new connections until some close");
                    }
                    return;
                }
            },
        };
        // Counted with this connection's own permit.
        let crowded = self.budget.crowded();
        let silence = crowded.then(|| self.budget.silence());
        let guard = self.metrics.open_connection();
        let local = match stream.local_addr() {
            Ok(local) => local,
            Err(err) => {
                tracing::debug!(%direction, %client, error = %err, "connection gone before it was handled");
                return;
            }
        };
        if let Err(err) = sockopt::tune(&stream) {
            tracing::debug!(%direction, %client, error = %err, "cannot set socket options");
        }
        let orig_dst = match self.orig_dst.original_dst(&stream) {
            Ok(Some(dst)) => dst,
            Ok(None) => local,
            Err(err) => {
                tracing::warn!(%direction, %client, error = %err, "cannot read the original destination; closing");
                return;
            }
        };
        let conn = Accepted {
            stream,
            client,
            local,
            orig_dst,
            guard,
            crowded,
        };
        let span = tracing::info_span!(
            "connection",
            %direction,
            %client,
            %orig_dst,
            peer_identity = tracing::field::Empty,
        );
        let stack = Arc::clone(&self.stack);
        self.drain.spawn_connection(
            async move {
                let _permit = permit;
                // Pinned here, stored once: the task is as small crowded or not.
                let serve = std::pin::pin!(stack.serve(conn));
                match silence {
                    Some(silence) => silence.guard(serve).await,
                    None => serve.await,
                }
            }
            .instrument(span),
        );
    }
}

/// Accept errors that mean "out of descriptors or memory", worth a pause.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(err.raw_os_error(), Some(c) if c == EMFILE || c == ENFILE || c == ENOBUFS || c == ENOMEM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::tcp::TcpMetrics;
    use crate::transport::orig_dst::StaticOrigDst;
    use prometheus_client::registry::Registry;
    use std::sync::Mutex;

    /// Records what the accept layer hands up.
    struct Recorder(Mutex<Vec<(SocketAddr, SocketAddr)>>);

    impl Stack for Recorder {
        fn direction(&self) -> Direction {
            Direction::Outbound
        }

        async fn serve(&self, conn: Accepted) {
            self.0.lock().unwrap().push((conn.local, conn.orig_dst));
        }
    }

    /// An accept loop over a fresh loopback listener serving `stack`, with every
    /// connection's original destination `dst` (the listener's own without), and a
    /// budget of `budget`: its address, metrics, drain and task.
    async fn spawn_loop<S: Stack>(
        stack: &Arc<S>,
        dst: Option<SocketAddr>,
        budget: usize,
    ) -> (
        SocketAddr,
        DirectionMetrics,
        Drain,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let direction = stack.direction();
        let metrics = TcpMetrics::register(&mut Registry::default()).direction(direction);
        let drain = Drain::new();
        let task = tokio::spawn(
            AcceptLoop {
                listener,
                stack: Arc::clone(stack),
                orig_dst: Arc::new(StaticOrigDst(dst.unwrap_or(addr))),
                metrics: metrics.clone(),
                drain: drain.clone(),
                budget: Budget::new(budget),
            }
            .run(),
        );
        (addr, metrics, drain, task)
    }

    #[tokio::test]
    async fn hands_connections_up_and_stops_on_drain() {
        let dst: SocketAddr = "198.18.0.1:7000".parse().unwrap();
        let stack = Arc::new(Recorder(Mutex::new(Vec::new())));
        let (addr, metrics, drain, task) = spawn_loop(&stack, Some(dst), 8).await;
        let _c = TcpStream::connect(addr).await.unwrap();
        for _ in 0..100 {
            if metrics.closed.get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stack.0.lock().unwrap().as_slice(), [(addr, dst)]);
        assert_eq!((metrics.opened.get(), metrics.closed.get()), (1, 1));

        drain.trigger();
        task.await.unwrap();
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn refuses_past_the_budget_and_keeps_what_is_open() {
        /// Holds each connection open until the test ends.
        struct Holder(Mutex<Vec<TcpStream>>);
        impl Stack for Holder {
            fn direction(&self) -> Direction {
                Direction::Inbound
            }
            async fn serve(&self, conn: Accepted) {
                let (stream, _info, _guard) = conn.split();
                self.0.lock().unwrap().push(stream);
                std::future::pending::<()>().await;
            }
        }
        let stack = Arc::new(Holder(Mutex::new(Vec::new())));
        let (addr, metrics, drain, _task) = spawn_loop(&stack, None, 2).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        for _ in 0..200 {
            if metrics.over_budget.get() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.over_budget.get(), 1);
        assert_eq!((metrics.opened.get(), metrics.open.get()), (2, 2));
        // The refused one is closed at once; the two within the budget stay open.
        let mut third = clients.pop().unwrap();
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt;
        assert_eq!(third.read(&mut buf).await.unwrap_or(0), 0);
        assert_eq!(stack.0.lock().unwrap().len(), 2);
        drain.trigger();
    }

    #[tokio::test]
    async fn a_spent_budget_admits_a_speaker_by_closing_the_oldest_silent_newcomer() {
        use crate::detect::{Peek, Read};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        /// Detects like the stacks do, records what each connection said, holds it.
        struct Detecting(Mutex<Vec<Vec<u8>>>);
        impl Stack for Detecting {
            fn direction(&self) -> Direction {
                Direction::Inbound
            }
            async fn serve(&self, conn: Accepted) {
                let (stream, _info, _guard) = conn.split();
                let mut peek = Peek::new(stream, Duration::from_secs(30));
                if peek.read_more().await == Read::More {
                    self.0.lock().unwrap().push(peek.buffered().to_vec());
                }
                std::future::pending::<()>().await;
            }
        }
        let stack = Arc::new(Detecting(Mutex::new(Vec::new())));
        let (addr, metrics, drain, _task) = spawn_loop(&stack, None, 4).await;
        // Four silent connections spend the budget; the last two came crowded.
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        while metrics.opened.get() < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut speaker = TcpStream::connect(addr).await.unwrap();
        speaker.write_all(b"hello").await.unwrap();
        for _ in 0..200 {
            if !stack.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stack.0.lock().unwrap().as_slice(), [b"hello".to_vec()]);
        assert_eq!((metrics.evicted.get(), metrics.over_budget.get()), (1, 0));
        // The oldest crowded one made room; the two from before the crowd stay.
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), silent[2].read(&mut buf));
        assert_eq!(read.await.unwrap().unwrap_or(0), 0);
        for early in &mut silent[..2] {
            let read = tokio::time::timeout(Duration::from_millis(200), early.read(&mut buf));
            assert!(
                read.await.is_err(),
                "a connection from before the crowd was closed"
            );
        }
        drain.trigger();
    }

    #[tokio::test]
    async fn a_burst_of_connections_lets_other_tasks_run() {
        let stack = Arc::new(Recorder(Mutex::new(Vec::new())));
        let (addr, metrics, drain, _task) = spawn_loop(&stack, None, 1024).await;
        let burst = 8 * u64::from(ACCEPT_BURST);
        // Blocking connects: all of them wait in the backlog before the loop runs.
        let _clients: Vec<_> = (0..burst)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // Another task, runnable all along, notes how far the loop got each turn.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ticker = tokio::spawn({
            let (seen, metrics) = (Arc::clone(&seen), metrics.clone());
            async move {
                while metrics.opened.get() < burst {
                    seen.lock().unwrap().push(metrics.opened.get());
                    tokio::task::yield_now().await;
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ticker)
            .await
            .unwrap()
            .unwrap();
        // The other task had a turn at least every two bursts (a yield waits for the
        // scheduler's next look at the kernel); all of them at once would leave it one.
        let seen = seen.lock().unwrap();
        let turns = seen.len() as u64;
        assert!(
            turns >= burst / (2 * u64::from(ACCEPT_BURST)),
            "{turns} turns while {burst} were accepted: {seen:?}"
        );
        drain.trigger();
    }

    #[test]
    fn crowded_newcomers_get_a_second_to_speak() {
        let addr: SocketAddr = "198.18.0.1:7000".parse().unwrap();
        let info = |crowded| ConnInfo {
            client: addr,
            local: addr,
            orig_dst: addr,
            crowded,
        };
        let normal = Duration::from_secs(10);
        assert_eq!(info(false).first_bytes_within(normal), normal);
        assert_eq!(info(true).first_bytes_within(normal), CROWDED_FIRST_BYTES);
        // Never longer than the normal deadline.
        let short = Duration::from_millis(300);
        assert_eq!(info(true).first_bytes_within(short), short);
    }

    #[test]
    fn exhaustion_errors_are_recognised() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(
            nix::libc::EMFILE
        )));
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
            nix::libc::ECONNABORTED
        )));
    }
}
