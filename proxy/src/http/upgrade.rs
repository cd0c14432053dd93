//! Upgrades (WebSocket and other `Upgrade:` protocols) and `CONNECT` tunnels.
//!
//! Design: such a request gets a fresh HTTP/1.1 connection of its own to the chosen
//! upstream (inside mesh TLS towards a meshed endpoint, where the far proxy sees
//! HTTP/1.1 and does the same towards its application), carrying the request with
//! its `Connection`/`Upgrade` headers. When the upstream agrees (`101`, or a 2xx to
//! `CONNECT`), both connections are taken over from HTTP and bytes are copied both
//! ways until either side closes: from then on the connection is opaque end to end.
//! No retries, timeouts or response edits apply past the answer. An `Upgrade` inside
//! HTTP/2 (extended CONNECT) is not supported and answered 501.

use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{RequestBody, ResponseBody};
use super::errors::HttpError;
use super::tee::CallerBody;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::Upstream;

/// Forwards an upgrade request to `upstream` and, if it agrees, joins the two
/// upgraded connections. `req` must still carry hyper's upgrade handle.
pub(crate) async fn forward(
    mut req: Request<Incoming>,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, HttpError> {
    if req.version() == Version::HTTP_2 {
        return Err(HttpError::Unsupported("CONNECT and upgrades over HTTP/2"));
    }
    let endpoint = upstream.connector().addr();
    let downstream = hyper::upgrade::on(&mut req);
    let io = upstream.open().await.map_err(|e| HttpError::Connect {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, RequestBody>(TokioIo::new(io))
        .await
        .map_err(|e| upstream_failed(endpoint, &e))?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upgrade connection ended with an error");
        }
    });
    let is_connect = req.method() == Method::CONNECT;
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    if !is_connect {
        // Origin form on a direct connection.
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = pq.into();
        }
    }
    let body = if hyper::body::Body::is_end_stream(&body) {
        RequestBody::Empty
    } else {
        RequestBody::Stream(CallerBody::new(body))
    };
    let mut response = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| upstream_failed(endpoint, &e))?;
    let agreed = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && response.status().is_success());
    if agreed {
        let upstream_side = hyper::upgrade::on(&mut response);
        tokio::spawn(join(downstream, upstream_side));
    }
    Ok(response.map(|body| ResponseBody::Upstream(UpstreamBody::plain(body))))
}

fn upstream_failed(endpoint: std::net::SocketAddr, e: &hyper::Error) -> HttpError {
    HttpError::Upstream {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

/// Copies bytes both ways between two upgraded connections until both are done.
async fn join(downstream: OnUpgrade, upstream: OnUpgrade) {
    match tokio::try_join!(downstream, upstream) {
        Ok((down, up)) => {
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            match tokio::io::copy_bidirectional(&mut down, &mut up).await {
                Ok((sent, received)) => {
                    tracing::debug!(sent, received, "upgraded connection closed")
                }
                Err(err) => tracing::debug!(error = %err, "upgraded connection ended"),
            }
        }
        Err(err) => tracing::debug!(error = %err, "upgrade did not complete"),
    }
}
