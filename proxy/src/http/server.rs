//! Serving one downstream connection as HTTP/1.x or HTTP/2 with hyper. Malformed
//! requests never reach the proxy's code: hyper answers them itself (400 for a bad
//! request line or header, 431 when the head exceeds [`MAX_REQUEST_HEAD`] or has too
//! many headers) and closes the connection. On drain, connections finish the request
//! in flight and close (HTTP/1) or send GOAWAY (HTTP/2).

use std::convert::Infallible;
use std::future::Future;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::ResponseBody;
use super::settings::{HEADER_READ_TIMEOUT, MAX_REQUEST_HEAD};
use crate::detect::Protocol;

/// Serves `io` (already detected as `protocol`, which must be HTTP) until the client
/// closes, an error ends it, or `shutdown` resolves (then gracefully).
pub async fn serve<IO, S, F>(io: IO, protocol: Protocol, service: S, shutdown: F)
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
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                () = &mut shutdown => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Protocol::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_REQUEST_HEAD as u32)
                .adaptive_window(true)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                () = &mut shutdown => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Protocol::Opaque => return,
    };
    if let Err(err) = result {
        // Clients going away mid-request is normal; keep it at debug.
        tracing::debug!(protocol = protocol.as_str(), error = %err, "HTTP connection ended with an error");
    }
}
