//! The connections of one upstream, held directly on hyper's connection handles:
//! idle HTTP/1.1 senders taken per request and put back when the response body ends,
//! and one shared HTTP/2 sender. Leaner than a general-purpose client (no pool key
//! hashing, no task per request to watch for idleness, no boxed response future),
//! which matters because every request crosses two of these.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::{UpstreamConnectError, UpstreamConnector};
use crate::http::body::RequestBody;
use crate::policy::breaker::Admitted;
use tokio::sync::Notify;

/// How long an idle pooled connection is kept.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest response head accepted from an upstream (HTTP/1 buffer, HTTP/2 header list).
pub(crate) const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
/// Idle HTTP/1.1 connections kept per upstream; more in flight at once are closed
/// after use.
pub(crate) const MAX_IDLE_PER_UPSTREAM: usize = 512;
/// HTTP/2 keepalive: a PING after this much silence...
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...which must be answered within this, or the connection is dropped.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of one request when a pooled connection turns out to be closed before the
/// request was written (the upstream closed it while idle).
const STALE_TRIES: usize = 3;

/// Why a request to an upstream got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be made.
    #[error(transparent)]
    Connect(#[from] UpstreamConnectError),
    /// The connection was made but the HTTP handshake failed.
    #[error("HTTP handshake with {addr} failed")]
    Handshake {
        /// The upstream address.
        addr: std::net::SocketAddr,
        /// What hyper reported.
        #[source]
        source: hyper::Error,
    },
    /// Every connection the bound allows is in use and `max` requests already
    /// wait for one: refused at once, nothing sent.
    #[error("{addr} has every connection its circuit breaker allows in use and {max} requests waiting (max_pending_requests)")]
    Overflow {
        /// The upstream address.
        addr: std::net::SocketAddr,
        /// The bound on waiting requests.
        max: u32,
    },
    /// The request was sent (or being sent) and the exchange failed.
    #[error("request to {addr} failed")]
    Request {
        /// The upstream address.
        addr: std::net::SocketAddr,
        /// What hyper reported.
        #[source]
        source: hyper::Error,
    },
}

impl SendError {
    /// Whether the upstream was never reached (so the request was not seen there).
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Handshake { .. })
    }
}

/// Idle HTTP/1.1 connections of one upstream, and the bounds on all of them.
#[derive(Debug, Default)]
pub(crate) struct Http1Pool {
    idle: Mutex<Vec<Idle>>,
    limits: Arc<ConnLimits>,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// An HTTP/1.1 connection with its place under the upstream's bound, given back
/// when the connection is dropped.
#[derive(Debug)]
struct Conn {
    sender: http1::SendRequest<RequestBody>,
    _slot: Slot,
}

/// The circuit breaker's bounds on one upstream's HTTP/1.1 connections: how many
/// the proxy holds at once (idle or in use), and how many requests may wait for
/// one when all are in use. One atomic each way per connection or wait; waiting
/// requests are woken when a connection is put back or closed.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    open: AtomicU32,
    max_open: AtomicU32,
    waiting: AtomicU32,
    max_waiting: AtomicU32,
    freed: Notify,
}

/// Unbounded until a service port's breaker sets bounds (the inbound side's pools
/// towards the local application never get any: the application's capacity is its
/// own business).
impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            open: AtomicU32::new(0),
            max_open: AtomicU32::new(u32::MAX),
            waiting: AtomicU32::new(0),
            max_waiting: AtomicU32::new(u32::MAX),
            freed: Notify::new(),
        }
    }
}

/// One connection's place under [`ConnLimits`].
#[derive(Debug)]
struct Slot(Arc<ConnLimits>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// One waiting request's place under [`ConnLimits`].
#[derive(Debug)]
struct Place(Arc<ConnLimits>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes one of `max` places counted by `count`, if one is free.
fn take(count: &AtomicU32, max: &AtomicU32) -> bool {
    let max = max.load(Ordering::Relaxed);
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl ConnLimits {
    /// New bounds (at least one of each); connections and waits beyond a lower
    /// bound end on their own.
    pub(crate) fn set(&self, max_connections: u32, max_pending: u32) {
        let before = self
            .max_open
            .swap(max_connections.max(1), Ordering::Relaxed);
        self.max_waiting
            .store(max_pending.max(1), Ordering::Relaxed);
        if max_connections > before {
            // Room for more connections: every waiting request looks again.
            self.freed.notify_waiters();
        }
    }

    /// Lowers the bounds to these where they are lower.
    pub(crate) fn tighten(&self, max_connections: u32, max_pending: u32) {
        self.max_open
            .fetch_min(max_connections.max(1), Ordering::Relaxed);
        self.max_waiting
            .fetch_min(max_pending.max(1), Ordering::Relaxed);
    }

    fn slot(self: &Arc<Self>) -> Option<Slot> {
        take(&self.open, &self.max_open).then(|| Slot(Arc::clone(self)))
    }

    fn place(self: &Arc<Self>) -> Option<Place> {
        take(&self.waiting, &self.max_waiting).then(|| Place(Arc::clone(self)))
    }

    fn has_room(&self) -> bool {
        self.open.load(Ordering::Acquire) < self.max_open.load(Ordering::Relaxed)
    }

    /// Connections held now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }
}

impl Http1Pool {
    /// Sends `request` on an idle connection, or on a new one while the bound
    /// allows; at the bound it waits for one to be put back or closed, unless
    /// `max_pending` requests already wait (then [`SendError::Overflow`]). The
    /// connection goes back to the pool when the response body has been read to
    /// its end.
    pub(crate) async fn send(
        self: &Arc<Self>,
        connector: &UpstreamConnector,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        origin_form(&mut request);
        let mut waiting: Option<Place> = None;
        loop {
            for _ in 0..STALE_TRIES {
                let Some(mut conn) = self.take_ready().await else {
                    break;
                };
                match conn.sender.try_send_request(request).await {
                    Ok(response) => return Ok(self.wrap(response, conn)),
                    Err(mut e) => match e.take_message() {
                        // Never written: the connection died while idle; try another.
                        Some(back) => request = back,
                        None => return Err(request_failed(connector, e.into_error())),
                    },
                }
            }
            if let Some(slot) = self.limits.slot() {
                drop(waiting);
                let mut conn = Conn {
                    sender: connect_http1(connector).await?,
                    _slot: slot,
                };
                return match conn.sender.send_request(request).await {
                    Ok(response) => Ok(self.wrap(response, conn)),
                    Err(source) => Err(request_failed(connector, source)),
                };
            }
            if waiting.is_none() {
                waiting = Some(self.limits.place().ok_or(SendError::Overflow {
                    addr: connector.addr(),
                    max: self.limits.max_waiting.load(Ordering::Relaxed),
                })?);
            }
            let freed = self.limits.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // Put back or closed since the last look: go again without waiting.
            if self.limits.has_room() || !self.is_idle_empty() {
                continue;
            }
            freed.await;
        }
    }

    /// The bounds on this upstream's connections.
    pub(crate) fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    fn is_idle_empty(&self) -> bool {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The newest idle connection that is still open and ready, dropping stale ones.
    async fn take_ready(&self) -> Option<Conn> {
        loop {
            let idle = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.pop()?
            };
            if idle.since.elapsed() > POOL_IDLE_TIMEOUT {
                // Every older one is older still.
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                return None;
            }
            let mut conn = idle.conn;
            // Put back at the end of a body, the connection may need a moment to
            // read its last bytes; a closed one fails here and is dropped.
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    fn wrap(self: &Arc<Self>, response: Response<Incoming>, conn: Conn) -> Response<UpstreamBody> {
        let keep = !closes_connection(&response);
        response.map(|inner| {
            // A connection that closes after this answer still holds its place
            // until the body has been read: the socket is in use until then.
            let mut body = UpstreamBody {
                admitted: None,
                inner,
                recycle: Some(Recycle {
                    pool: Arc::clone(self),
                    conn,
                    keep,
                }),
            };
            if body.inner.is_end_stream() {
                body.recycle();
            }
            body
        })
    }

    fn put(&self, conn: Conn) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() >= MAX_IDLE_PER_UPSTREAM {
                // Dropped outside the lock: its slot wakes a waiting request.
                drop(idle);
                drop(conn);
                return;
            }
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        self.limits.freed.notify_one();
    }

    /// Idle connections right now (for tests and the admin view).
    #[cfg(test)]
    pub(crate) fn idle_len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One HTTP/2 connection of an upstream, shared by every request; made on first use
/// and again after it closes.
#[derive(Debug, Default)]
pub(crate) struct Http2Conn {
    sender: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// Held while connecting, so concurrent first requests make one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Http2Conn {
    /// Sends `request` on the shared connection, making it if needed; a connection
    /// found closed before the request was written is replaced.
    pub(crate) async fn send(
        &self,
        connector: &UpstreamConnector,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut sender = self.sender(connector).await?;
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response.map(UpstreamBody::plain)),
                Err(mut e) => match e.take_message() {
                    // Closed under us (GOAWAY, reset): `sender` skips it next time.
                    Some(back) if tries < STALE_TRIES => request = back,
                    _ => return Err(request_failed(connector, e.into_error())),
                },
            }
        }
    }

    fn current(&self) -> Option<http2::SendRequest<RequestBody>> {
        let guard = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn sender(
        &self,
        connector: &UpstreamConnector,
    ) -> Result<http2::SendRequest<RequestBody>, SendError> {
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let sender = connect_http2(connector).await?;
        *self.sender.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
        Ok(sender)
    }
}

async fn connect_http1(
    connector: &UpstreamConnector,
) -> Result<http1::SendRequest<RequestBody>, SendError> {
    let io = TokioIo::new(connector.open().await?);
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(MAX_UPSTREAM_HEAD)
        .handshake(io)
        .await
        .map_err(|source| handshake_failed(connector, source))?;
    drive(conn, "HTTP/1.1");
    Ok(sender)
}

async fn connect_http2(
    connector: &UpstreamConnector,
) -> Result<http2::SendRequest<RequestBody>, SendError> {
    let io = TokioIo::new(connector.open().await?);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_UPSTREAM_HEAD as u32)
        .adaptive_window(true)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .handshake(io)
        .await
        .map_err(|source| handshake_failed(connector, source))?;
    drive(conn, "HTTP/2");
    Ok(sender)
}

/// Runs a connection's I/O as a task of its own until it closes.
fn drive<C>(conn: C, version: &'static str)
where
    C: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, version, "upstream connection ended with an error");
        }
    });
}

fn handshake_failed(connector: &UpstreamConnector, source: hyper::Error) -> SendError {
    SendError::Handshake {
        addr: connector.addr(),
        source,
    }
}

fn request_failed(connector: &UpstreamConnector, source: hyper::Error) -> SendError {
    SendError::Request {
        addr: connector.addr(),
        source,
    }
}

/// HTTP/1.1 wants origin form (`/path?query`) and a `Host` header; the layer builds
/// absolute URIs, so move the authority into `Host` (unless the caller sent one).
fn origin_form(request: &mut Request<RequestBody>) {
    if !request.headers().contains_key(HOST) {
        if let Some(authority) = request.uri().authority() {
            let host = match authority.port_u16() {
                Some(80) => authority.host(),
                _ => authority.as_str(),
            };
            if let Ok(value) = HeaderValue::from_str(host) {
                request.headers_mut().insert(HOST, value);
            }
        }
    }
    if request.method() == Method::CONNECT {
        return;
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
}

/// Whether the upstream said this is the connection's last exchange.
fn closes_connection<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        })
}

/// An upstream's response body; for HTTP/1.1 it puts its connection back in the
/// pool when it ends.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    recycle: Option<Recycle>,
    /// The request's place under its backend's circuit breaker, given back when
    /// the body ends or is dropped.
    admitted: Option<Admitted>,
}

#[derive(Debug)]
struct Recycle {
    pool: Arc<Http1Pool>,
    conn: Conn,
    /// Whether the connection goes back to the pool (else it is dropped).
    keep: bool,
}

impl UpstreamBody {
    /// A body that belongs to no pool (HTTP/2, or a connection of its own).
    pub(crate) fn plain(inner: Incoming) -> UpstreamBody {
        UpstreamBody {
            inner,
            recycle: None,
            admitted: None,
        }
    }

    /// This body, holding `admitted` until it ends.
    pub(crate) fn holding(mut self, admitted: Admitted) -> UpstreamBody {
        self.admitted = Some(admitted);
        self
    }

    fn recycle(&mut self) {
        if let Some(Recycle { pool, conn, keep }) = self.recycle.take() {
            if keep {
                pool.put(conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.recycle(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.recycle(),
            // A broken body leaves the connection in an unknown state: drop it.
            Poll::Ready(Some(Err(_))) => self.recycle = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;

    use super::*;

    /// How the test server treats its connections.
    #[derive(Clone, Copy, PartialEq)]
    enum Server {
        KeepAlive,
        /// Answers `Connection: close` and closes.
        CloseEach,
        /// Keeps the connection after the answer, then drops it silently.
        DropIdle,
    }

    /// A local server answering `host path` for every request; counts connections.
    async fn server(mode: Server) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let host = req
                            .headers()
                            .get(HOST)
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let text = format!("{host} {}", req.uri());
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        if mode == Server::CloseEach {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                HeaderValue::from_static("close"),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    });
                    let io = TokioIo::new(stream);
                    let builder = auto::Builder::new(TokioExecutor::new());
                    if mode == Server::DropIdle {
                        // Serve exactly one exchange, then close while the client idles.
                        let conn = builder.serve_connection(io, service);
                        tokio::pin!(conn);
                        let _ =
                            tokio::time::timeout(Duration::from_millis(50), conn.as_mut()).await;
                    } else {
                        let _ = builder.serve_connection(io, service).await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get(addr: SocketAddr, version: http::Version) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::Empty);
        *request.uri_mut() = format!("http://{addr}/a?b=1").parse().unwrap();
        *request.version_mut() = version;
        request
    }

    fn connector(addr: SocketAddr) -> UpstreamConnector {
        UpstreamConnector::new(addr, None, Duration::from_secs(2))
    }

    async fn text(response: Response<UpstreamBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn http1_reuses_one_connection_in_origin_form() {
        let (addr, accepted) = server(Server::KeepAlive).await;
        let pool = Arc::new(Http1Pool::default());
        for _ in 0..5 {
            let response = pool
                .send(&connector(addr), get(addr, http::Version::HTTP_11))
                .await
                .unwrap();
            assert_eq!(text(response).await, format!("{addr} /a?b=1"));
            assert_eq!(pool.idle_len(), 1, "back in the pool once the body ended");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn http1_concurrent_requests_open_more_then_share_them() {
        let (addr, accepted) = server(Server::KeepAlive).await;
        let pool = Arc::new(Http1Pool::default());
        let c = connector(addr);
        let first = pool
            .send(&c, get(addr, http::Version::HTTP_11))
            .await
            .unwrap();
        // The first body is still unread: its connection is busy, so a second opens.
        let second = pool
            .send(&c, get(addr, http::Version::HTTP_11))
            .await
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        text(first).await;
        text(second).await;
        assert_eq!(pool.idle_len(), 2);
        for _ in 0..4 {
            text(
                pool.send(&c, get(addr, http::Version::HTTP_11))
                    .await
                    .unwrap(),
            )
            .await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A request sent in a task of its own (it may wait for a connection); its
    /// answer's text.
    fn waiting(pool: &Arc<Http1Pool>, addr: SocketAddr) -> tokio::task::JoinHandle<String> {
        let (pool, c) = (Arc::clone(pool), connector(addr));
        tokio::spawn(async move {
            let sent = pool.send(&c, get(addr, http::Version::HTTP_11)).await;
            text(sent.unwrap()).await
        })
    }

    #[tokio::test]
    async fn http1_connections_are_bounded_and_requests_wait_then_overflow() {
        let (addr, accepted) = server(Server::KeepAlive).await;
        let pool = Arc::new(Http1Pool::default());
        pool.limits().set(1, 1);
        let c = connector(addr);
        // The one connection allowed is busy until its body is read.
        let first = pool
            .send(&c, get(addr, http::Version::HTTP_11))
            .await
            .unwrap();
        assert_eq!(pool.limits().open(), 1);
        // A second request waits for it...
        let waiter = waiting(&pool, addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "the second request waits for the connection"
        );
        // ...and a third, with the queue full, is refused at once.
        let refused = pool.send(&c, get(addr, http::Version::HTTP_11)).await;
        assert!(matches!(refused, Err(SendError::Overflow { max: 1, .. })));
        // The first body ends: its connection goes to the waiting request.
        text(first).await;
        let answered = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken when the connection came back")
            .unwrap();
        assert_eq!(answered, format!("{addr} /a?b=1"));
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "never a second connection"
        );
        assert_eq!(pool.limits().open(), 1);
    }

    #[tokio::test]
    async fn a_closed_connection_gives_its_place_to_a_waiting_request() {
        let (addr, accepted) = server(Server::CloseEach).await;
        let pool = Arc::new(Http1Pool::default());
        pool.limits().set(1, 4);
        let c = connector(addr);
        let first = pool
            .send(&c, get(addr, http::Version::HTTP_11))
            .await
            .unwrap();
        let waiter = waiting(&pool, addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // `Connection: close`: the first connection is dropped, not pooled.
        text(first).await;
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken when the connection closed")
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.limits().open(), 0);
    }

    #[tokio::test]
    async fn http1_connection_close_is_not_pooled() {
        let (addr, accepted) = server(Server::CloseEach).await;
        let pool = Arc::new(Http1Pool::default());
        for _ in 0..3 {
            let response = pool
                .send(&connector(addr), get(addr, http::Version::HTTP_11))
                .await
                .unwrap();
            text(response).await;
            assert_eq!(pool.idle_len(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn http1_connection_closed_while_idle_is_replaced() {
        let (addr, accepted) = server(Server::DropIdle).await;
        let pool = Arc::new(Http1Pool::default());
        let c = connector(addr);
        text(
            pool.send(&c, get(addr, http::Version::HTTP_11))
                .await
                .unwrap(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let response = pool
            .send(&c, get(addr, http::Version::HTTP_11))
            .await
            .unwrap();
        assert_eq!(text(response).await, format!("{addr} /a?b=1"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = Arc::new(Http1Pool::default());
        let err = pool
            .send(&connector(addr), get(addr, http::Version::HTTP_11))
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err}");
        let err = Http2Conn::default()
            .send(&connector(addr), get(addr, http::Version::HTTP_2))
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn http2_multiplexes_on_one_connection() {
        let (addr, accepted) = server(Server::KeepAlive).await;
        let conn = Arc::new(Http2Conn::default());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let conn = Arc::clone(&conn);
            tasks.spawn(async move {
                let response = conn
                    .send(&connector(addr), get(addr, http::Version::HTTP_2))
                    .await
                    .unwrap();
                text(response).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            assert!(done.unwrap().ends_with(&format!("{addr}/a?b=1")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn origin_form_keeps_the_callers_host() {
        let mut request = Request::new(RequestBody::Empty);
        *request.uri_mut() = Uri::from_static("http://svc.demo:80/x");
        origin_form(&mut request);
        assert_eq!(request.uri(), "/x");
        assert_eq!(request.headers()[HOST], "svc.demo");
        let mut request = Request::new(RequestBody::Empty);
        *request.uri_mut() = Uri::from_static("http://10.0.0.1:8080/");
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("app.example"));
        origin_form(&mut request);
        assert_eq!(request.headers()[HOST], "app.example");
        assert_eq!(request.uri(), "/");
        let closing = Response::builder()
            .header("connection", "keep-alive, Close")
            .body(())
            .unwrap();
        assert!(closes_connection(&closing));
        assert!(!closes_connection(&Response::new(())));
    }
}
