//! `GET /v1/watch`: streams the requesting workload's [`View`] as newline-delimited
//! JSON: the current view at once, then a new line whenever it changes. With
//! `?discovery=on-demand` the view carries no services: the proxy resolves each
//! destination it meets ([`super::resolve`]).
//!
//! Why one long-lived stream rather than a long poll: a change reaches every proxy
//! as soon as the reloader publishes it, without a request round trip per change and
//! without a gap between polls (the `watch` channel always holds the newest value,
//! so a slow reader skips to the latest view instead of queueing stale ones). Under
//! HTTP/2 the stream shares one connection with certificate requests and PING frames
//! keep it alive; under HTTP/1.1 it is a chunked response (`curl -N` shows it live).
//! The cost, that a proxy must notice a dead stream and reconnect with backoff, it
//! pays anyway, since the agent can restart at any time.

use super::auth::{authenticate, TokenAuthenticator};
use super::reply::Body;
use super::Shared;
use crate::ca::AgentCa;
use crate::metrics::AgentMetrics;
use crate::source::{Snapshot, Workload};
use crate::token::TokenHash;
use crate::view::{same_except_version, view_for, Discovery};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pillion_api::resolve::wants_on_demand;
use pillion_api::view::View;
use pillion_identity::SpiffeId;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Lines buffered per watcher; the watch channel already collapses bursts.
const BUFFERED_LINES: usize = 2;

/// Starts a view stream for the workload the token proves; before the source's
/// first complete view (Kubernetes: the first sync of every watch) it answers 503,
/// so no proxy ever takes an empty view for the mesh.
pub async fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    let rx = shared.source.clone();
    let discovery = if wants_on_demand(req.uri().query()) {
        Discovery::OnDemand
    } else {
        Discovery::Full
    };
    let (identity, token) = match authenticate(req.headers(), shared.auth.as_ref(), "watch").await {
        Ok(found) => found,
        Err(resp) => return *resp,
    };
    if let Some(refused) = not_ready(shared) {
        return refused;
    }
    let (tx, lines) = mpsc::channel(BUFFERED_LINES);
    tracing::info!(%identity, token_sha256 = %token.short(), ?discovery, "watch started");
    let agent = StreamInputs::of(shared);
    tokio::spawn(stream_views(rx, agent, token, identity, discovery, tx));
    line_stream(lines)
}

/// 503 before the source's first complete view, so no proxy takes an empty view
/// (or an empty answer) for the mesh.
pub(super) fn not_ready(shared: &Shared) -> Option<Response<Body>> {
    (!*shared.ready.borrow()).then(|| {
        super::reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the agent has not loaded its first view of the cluster yet; retry shortly",
        )
    })
}

/// A 200 answer whose body is the lines sent on `lines`, as NDJSON.
pub(super) fn line_stream(lines: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut resp = Response::new(LineBody { lines }.boxed());
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// What a stream (of views or of answers) takes from the agent.
pub(super) struct StreamInputs {
    /// Re-checks the token on every change.
    pub(super) auth: Arc<dyn TokenAuthenticator>,
    /// Whose trust bundle each view carries.
    pub(super) ca: Arc<AgentCa>,
    /// Wakes the stream when the bundle changes.
    pub(super) ca_changes: watch::Receiver<u64>,
    /// Ends the stream when the agent stops.
    pub(super) shutdown: CancellationToken,
    /// Watchers and push latency.
    pub(super) metrics: Arc<AgentMetrics>,
    /// Answers already encoded at the newest version.
    pub(super) answers: Arc<super::answers::Answers>,
    /// Fetched key sets, filled into views that name a `jwks_uri`.
    pub(super) jwks: Arc<crate::jwks::JwksStore>,
}

impl StreamInputs {
    pub(super) fn of(shared: &Shared) -> StreamInputs {
        StreamInputs {
            auth: shared.auth.clone(),
            ca_changes: shared.ca.subscribe(),
            ca: Arc::clone(&shared.ca),
            shutdown: shared.shutdown.clone(),
            metrics: Arc::clone(&shared.metrics),
            answers: Arc::clone(&shared.answers),
            jwks: Arc::clone(&shared.jwks),
        }
    }
}

/// Sends the workload's view now and after every change that affects it, until the
/// client goes away, the token stops proving the identity, or the agent shuts down.
async fn stream_views(
    mut rx: watch::Receiver<Snapshot>,
    agent: StreamInputs,
    token: TokenHash,
    identity: SpiffeId,
    discovery: Discovery,
    tx: mpsc::Sender<Bytes>,
) {
    let StreamInputs {
        auth,
        ca,
        mut ca_changes,
        shutdown,
        metrics,
        jwks,
        ..
    } = agent;
    let mut jwks_changes = jwks.subscribe();
    let _watching = metrics.watching();
    let mut last: Option<View> = None;
    loop {
        let published;
        let bundle = ca.trust_bundle_pem();
        let issuer = ca.issuer_sha256();
        let view = {
            let snapshot = rx.borrow_and_update();
            published = snapshot.published;
            let catalog = &snapshot.catalog;
            auth.still_valid(&token, &identity, catalog).then(|| {
                match catalog.workload(&identity) {
                    Some(w) => view_for(catalog, w, snapshot.version, &bundle, discovery),
                    // Known to the credential but not (yet) to the source, e.g. a pod
                    // the Kubernetes watch has not seen: every service, default policy.
                    None => view_for(
                        catalog,
                        &unlisted(&identity),
                        snapshot.version,
                        &bundle,
                        discovery,
                    ),
                }
            })
        };
        let Some(mut view) = view else {
            tracing::info!(%identity, token_sha256 = %token.short(),
                "watch ended: the token no longer proves this identity");
            return;
        };
        view.issuer_sha256 = Some(issuer);
        jwks_changes.borrow_and_update();
        jwks.fill(&mut view);
        if !last.as_ref().is_some_and(|l| same_except_version(l, &view)) {
            match send_line(&tx, &view, &shutdown).await {
                Ok(()) => {}
                Err(Unsent::ClientGone) => break,
                Err(Unsent::ShuttingDown) => return,
                Err(Unsent::Encoding(e)) => {
                    tracing::error!(%identity, error = %e, "cannot encode a view; ending the watch");
                    return;
                }
            }
            // A source change reaching a watcher; neither the first line of a stream
            // nor a new trust bundle is a push of a version.
            if last.as_ref().is_some_and(|l| l.version != view.version) {
                metrics.pushed(published.elapsed());
            }
            tracing::debug!(%identity, version = view.version, "view sent");
            last = Some(view);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            // A key set this view may use was fetched or changed.
            _ = jwks_changes.changed() => {}
            // The CA changed: the stream ends with its connection (see
            // `server::serve`), and the proxy's next one carries the new bundle.
            _ = ca_changes.changed() => {
                tracing::info!(%identity, "watch ended: the CA changed; the proxy reconnects");
                return;
            }
            _ = tx.closed() => break,
            _ = shutdown.cancelled() => return,
        }
    }
    tracing::info!(%identity, "watch ended: the client went away");
}

/// Why a line was not sent.
pub(super) enum Unsent {
    /// The value does not encode (a bug).
    Encoding(serde_json::Error),
    /// The client went away.
    ClientGone,
    /// The agent is shutting down.
    ShuttingDown,
}

/// Sends `value` as one NDJSON line on `tx`, unless the agent shuts down first.
pub(super) async fn send_line<T: serde::Serialize>(
    tx: &mpsc::Sender<Bytes>,
    value: &T,
    shutdown: &CancellationToken,
) -> Result<(), Unsent> {
    send_encoded(tx, encode_line(value).map_err(Unsent::Encoding)?, shutdown).await
}

/// `value` as one NDJSON line.
pub(super) fn encode_line<T: serde::Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}

/// Sends a line already encoded.
pub(super) async fn send_encoded(
    tx: &mpsc::Sender<Bytes>,
    line: Bytes,
    shutdown: &CancellationToken,
) -> Result<(), Unsent> {
    tokio::select! {
        sent = tx.send(line) => sent.map_err(|_| Unsent::ClientGone),
        _ = shutdown.cancelled() => Err(Unsent::ShuttingDown),
    }
}

/// A workload the source does not list: its identity and the default policy.
fn unlisted(identity: &SpiffeId) -> Workload {
    Workload {
        namespace: identity.namespace().to_string(),
        name: identity.service_account().to_string(),
        identity: identity.clone(),
        addresses: Vec::new(),
        inbound: Default::default(),
        gateway: None,
        token: None,
    }
}

/// A response body fed line by line from a channel; it ends when the sender drops.
struct LineBody {
    lines: mpsc::Receiver<Bytes>,
}

impl http_body::Body for LineBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.lines
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}
