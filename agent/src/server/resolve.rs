//! `GET /v1/resolve?ip=IP&port=P`: on-demand discovery of one destination (see
//! [`pillion_api::resolve`]). The answer goes at once, then again whenever it
//! changes: the service gains an endpoint, loses the address, or a service takes
//! an address that was outside the mesh. Each stream costs one task and the last
//! answer it sent; a change costs each stream one hash lookup.

use super::auth::authenticate;
use super::reply::{self, Body};
use super::watch::{encode_line, line_stream, not_ready, send_encoded, StreamInputs, Unsent};
use super::Shared;
use crate::source::Snapshot;
use crate::token::TokenHash;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pillion_api::certs::error_codes;
use pillion_api::resolve::{parse_resolve_query, Resolution};
use pillion_api::view::Service;
use pillion_identity::SpiffeId;
use std::net::SocketAddr;
use tokio::sync::{mpsc, watch};

/// Answers buffered per stream; the watch channel already collapses bursts.
const BUFFERED_ANSWERS: usize = 2;

/// The last answer sent: the service and its routes' backend services.
type Answer = (Option<Service>, Vec<Service>);

/// Starts an answer stream for the destination the query names, for any workload
/// the token proves (every workload may learn every service, as in a full view).
pub async fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    let address = match parse_resolve_query(req.uri().query().unwrap_or("")) {
        Ok(address) => address,
        Err(reason) => {
            return reply::error(
                StatusCode::BAD_REQUEST,
                error_codes::BAD_REQUEST,
                format!("{reason}, e.g. ?ip=198.18.0.100&port=8080"),
            )
        }
    };
    let (identity, token) = match authenticate(req.headers(), shared.auth.as_ref(), "resolve").await
    {
        Ok(found) => found,
        Err(resp) => return *resp,
    };
    if let Some(refused) = not_ready(shared) {
        return refused;
    }
    let (tx, answers) = mpsc::channel(BUFFERED_ANSWERS);
    tracing::debug!(%identity, %address, "resolve started");
    tokio::spawn(stream_answers(
        shared.source.clone(),
        StreamInputs::of(shared),
        (token, identity),
        address,
        tx,
    ));
    line_stream(answers)
}

/// Sends the answer for `address` now and whenever it changes, until the client
/// goes away, the token stops proving the identity, the CA changes (the connection
/// closes and the proxy reconnects on the new chain) or the agent shuts down.
async fn stream_answers(
    mut rx: watch::Receiver<Snapshot>,
    agent: StreamInputs,
    (token, identity): (TokenHash, SpiffeId),
    address: SocketAddr,
    tx: mpsc::Sender<Bytes>,
) {
    let StreamInputs {
        auth,
        mut ca_changes,
        shutdown,
        metrics,
        answers,
        ..
    } = agent;
    let _resolving = metrics.resolving();
    let mut last: Option<Answer> = None;
    loop {
        let (answer, version, published) = {
            let snapshot = rx.borrow_and_update();
            let catalog = &snapshot.catalog;
            if !auth.still_valid(&token, &identity, catalog) {
                tracing::info!(%identity, %address, "resolve ended: the token no longer proves this identity");
                return;
            }
            let service = catalog.service_at(address);
            let backends = service.map(|s| catalog.backends_of(s)).unwrap_or_default();
            let same = last.as_ref().is_some_and(|(l, lb)| {
                l.as_ref() == service
                    && lb.len() == backends.len()
                    && lb.iter().zip(&backends).all(|(a, b)| a == *b)
            });
            let answer =
                (!same).then(|| (service.cloned(), backends.into_iter().cloned().collect()));
            (answer, snapshot.version, snapshot.published)
        };
        if let Some((service, backends)) = answer {
            let found = service.is_some();
            let resolution = Resolution {
                version,
                address,
                service,
                backends,
            };
            let line = answers.line(version, address, || encode_line(&resolution));
            let sent = match line {
                Ok(line) => send_encoded(&tx, line, &shutdown).await,
                Err(e) => Err(Unsent::Encoding(e)),
            };
            match sent {
                Ok(()) => {}
                Err(Unsent::Encoding(e)) => {
                    tracing::error!(%address, error = %e, "cannot encode an answer; ending the stream");
                    return;
                }
                Err(Unsent::ClientGone | Unsent::ShuttingDown) => return,
            }
            metrics.resolved(found);
            if last.is_some() {
                metrics.pushed(published.elapsed());
            }
            last = Some((resolution.service, resolution.backends));
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = ca_changes.changed() => return,
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => return,
        }
    }
}
