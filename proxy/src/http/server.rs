//! Serving one downstream connection as HTTP/1.x or HTTP/2 with hyper. Malformed
//! requests never reach the proxy's code: hyper answers them itself (400 for a bad
//! request line or header, 431 when the head exceeds [`MAX_REQUEST_HEAD`] or has too
//! many headers) and closes the connection. On drain, connections finish the request
//! in flight and close (HTTP/1) or send GOAWAY (HTTP/2). An HTTP/1 connection gets
//! [`HEADER_READ_TIMEOUT`] for each request head, also between requests; an HTTP/2
//! one is sent GOAWAY once idle ([`super::idle`]). HTTP/2 streams run in tasks of
//! their own that keep the connection's span.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::rt::Executor;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::body::ResponseBody;
use super::idle::{Activity, IDLE_TIMEOUT};
use crate::detect::Protocol;

/// Largest request head (request line and headers) accepted; larger ones get 431.
pub(crate) const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Time a client may take to send a request head on an idle HTTP/1 connection.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Time an idle HTTP/2 connection gets to finish after GOAWAY: a peer that never
/// acknowledges it (h2 waits for a PING round trip) is dropped then.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(10);

/// Spawns HTTP/2 stream tasks inside the connection's span, so their log lines say
/// which connection they belong to.
#[derive(Clone)]
struct InSpan(tracing::Span);

impl<F> Executor<F> for InSpan
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.instrument(self.0.clone()));
    }
}

/// Serves `io` (already detected as `protocol`, which must be HTTP) until the client
/// closes, an error ends it, or `shutdown` resolves (then gracefully).
pub(crate) async fn serve<IO, S, F>(io: IO, protocol: Protocol, service: S, shutdown: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    F: Future<Output = ()>,
{
    let io = TokioIo::new(io);
    tokio::pin!(shutdown);
    let result = match protocol {
        Protocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_header_size(MAX_REQUEST_HEAD)
                .serve_connection(io, service)
                .with_upgrades();
            // HTTP/1's idle bound is hyper's header-read timeout.
            let idle = std::future::pending();
            graceful(conn, &mut shutdown, idle, |c| c.graceful_shutdown()).await
        }
        Protocol::Http2 => {
            let activity = Activity::new();
            let tracked = {
                let activity = activity.clone();
                hyper::service::service_fn(move |request| {
                    let in_flight = activity.start();
                    let response = service.call(request);
                    async move {
                        let response = response.await;
                        drop(in_flight);
                        response
                    }
                })
            };
            let conn = hyper::server::conn::http2::Builder::new(InSpan(tracing::Span::current()))
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_REQUEST_HEAD as u32)
                .adaptive_window(true)
                .serve_connection(io, tracked);
            let idle = activity.idle(HEADER_READ_TIMEOUT, IDLE_TIMEOUT);
            graceful(conn, &mut shutdown, idle, |c| c.graceful_shutdown()).await
        }
        Protocol::Opaque => return,
    };
    if let Err(err) = result {
        // Clients going away mid-request is normal; keep it at debug.
        tracing::debug!(protocol = protocol.as_str(), error = %err, "HTTP connection ended with an error");
    }
}

/// Drives `conn` to its end. Once `shutdown` resolves it is asked to finish
/// gracefully; once `idle` does, too, but a peer that will not even finish the
/// goodbye within [`GOODBYE_TIMEOUT`] is dropped.
async fn graceful<C, E, F, I>(
    conn: C,
    shutdown: &mut std::pin::Pin<&mut F>,
    idle: I,
    begin_shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
    F: Future<Output = ()>,
    I: Future<Output = ()>,
{
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.as_mut() => {
            begin_shutdown(conn.as_mut());
            conn.await
        }
        () = idle => {
            tracing::debug!("idle HTTP connection; closing it gracefully");
            begin_shutdown(conn.as_mut());
            tokio::time::timeout(GOODBYE_TIMEOUT, conn).await.unwrap_or(Ok(()))
        }
    }
}
