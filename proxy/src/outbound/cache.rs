//! A request on a route with a cache (`cache:`): answered from the proxy's store
//! while the kept answer is fresh, sent upstream otherwise, and the upstream's
//! answer kept when RFC 9111 lets a shared cache keep it. Per request:
//!
//! 1. not a plain `GET` (a body, a range, `no-store`, a precondition the cache does
//!    not evaluate): sent as it is, nothing kept (`bypass`); a `HEAD` is answered
//!    from a fresh `GET` entry's head (`hit`), or sent as it is (`miss`);
//! 2. look the key up; a request already fetching the same key is waited for
//!    (within the route's timeout, at most 10 s), so a burst of misses sends one
//!    request;
//! 3. fresh: answered here (`hit`), `304` when the caller's `If-None-Match` or
//!    `If-Modified-Since` holds;
//! 4. stale: sent with the entry's validators; a `304` refreshes the entry and it
//!    answers (`revalidated`), a whole answer replaces it (`stale`);
//! 5. missing: sent without the caller's own validators, so the answer is whole
//!    and can be kept (`miss`); its body is read up to the route's bound first,
//!    and one that is larger streams on unkept. An answer that cannot be kept
//!    leaves a pass mark, so later requests for the key go upstream at once
//!    (with their own validators) instead of waiting for each other, until one
//!    brings an answer that can be kept.
//!
//! `pillion-cache` on the answer says which; the route's policy actions count it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::http::OutboundConn;
use crate::http::body::{ResponseBody, Resumed};
use crate::http::errors::HttpError;
use crate::http::hop::strip_hop_by_hop;
use crate::policy::cache::freshness::{self, NotStored};
use crate::policy::cache::key::Key;
use crate::policy::cache::store::{Guard, Lookup, Stored};
use crate::policy::cache::{self, Ask, RouteCache, CACHE_HEADER, OWN_PRECONDITIONS};
use crate::state::outbound::{RouteState, Target};
use crate::telemetry::metrics::http::Action;
use crate::telemetry::RequestObserver;

/// Longest a request waits for another one fetching the same answer.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// One request's way through a route's cache.
pub(super) struct Through<'a> {
    pub conn: &'a OutboundConn,
    pub target: &'a Target,
    pub route: &'a RouteState,
    pub cache: &'a RouteCache,
    pub matched_prefix: Option<&'a str>,
    pub start: Instant,
}

/// What the cache did, as `pillion-cache` says it and the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl Outcome {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Bypass => "bypass",
        })
    }

    fn action(self) -> Action {
        match self {
            Outcome::Hit => Action::CacheHit,
            Outcome::Miss => Action::CacheMiss,
            Outcome::Stale => Action::CacheStale,
            Outcome::Revalidated => Action::CacheRevalidated,
            Outcome::Bypass => Action::CacheBypass,
        }
    }
}

/// Where an answer goes: a key this request holds the placeholder of (others
/// wait on it), or one that already holds something (a stale entry, a pass mark).
enum Slot<'a> {
    Vacant(Key, Guard<'a>),
    Taken(Key),
    /// Marked to pass already: nothing to wait for, nothing to mark again.
    Passing,
}

/// A body read whole, or found too large (or broken off) and handed back.
enum Read<B> {
    Whole(Bytes),
    /// The frames read, in order, and the rest of the body.
    Partial(VecDeque<Frame<Bytes>>, B),
}

impl Through<'_> {
    pub(super) async fn serve(
        self,
        mut parts: Parts,
        body: Incoming,
        mut observer: RequestObserver,
    ) -> Response<ResponseBody> {
        let version = parts.version;
        let lookup = match self.cache.ask(&parts, !body.is_end_stream()) {
            Ask::Lookup(lookup) => lookup,
            Ask::Bypass => {
                let (response, peer) = self.send(parts, body, &mut observer).await;
                return self.finish(version, response, &peer, Outcome::Bypass, observer);
            }
        };
        // Waiting for another request's answer ends with the route's timeout, and
        // without one after `MAX_WAIT`: then this request goes upstream itself.
        let wait = self.route.timeout.unwrap_or(MAX_WAIT).min(MAX_WAIT);
        let deadline = Some(self.start + wait);
        let store = &self.cache.store;
        if lookup.head {
            let now = Instant::now();
            if let Some(stored) = store.find(&lookup.primary, &parts.headers) {
                if lookup.reuses(&stored, now) {
                    let mut response = served(&stored, now, &parts.headers);
                    *response.body_mut() = ResponseBody::local(Bytes::new());
                    let peer = Arc::clone(self.conn.no_peer());
                    return self.finish(version, response, &peer, Outcome::Hit, observer);
                }
            }
            let (response, peer) = self.send(parts, body, &mut observer).await;
            return self.finish(version, response, &peer, Outcome::Miss, observer);
        }
        let found = store
            .lookup(&lookup.primary, &parts.headers, deadline)
            .await;
        let now = Instant::now();
        let (stale, slot) = match found {
            Lookup::Found { stored, .. } if lookup.reuses(&stored, now) => {
                let response = served(&stored, now, &parts.headers);
                let peer = Arc::clone(self.conn.no_peer());
                return self.finish(version, response, &peer, Outcome::Hit, observer);
            }
            Lookup::Found { variant, stored } => {
                let key = variant.unwrap_or_else(|| lookup.primary.clone());
                (Some(stored), Slot::Taken(key))
            }
            Lookup::Vacant { key, guard } => (None, Slot::Vacant(key, guard)),
            Lookup::Pass => (None, Slot::Passing),
            Lookup::Busy => {
                let (response, peer) = self.send(parts, body, &mut observer).await;
                return self.finish(version, response, &peer, Outcome::Miss, observer);
            }
        };
        // The caller's fields as asked: its variant and its own preconditions, which
        // go upstream only for a key whose answers are not kept (they would make
        // the answer a `304` with nothing to keep).
        let asked = parts.headers.clone();
        if stale.is_some() || matches!(slot, Slot::Vacant(..)) {
            for name in &OWN_PRECONDITIONS {
                parts.headers.remove(name);
            }
        }
        if let Some(stored) = &stale {
            cache::validators(stored, &mut parts.headers);
        }
        let (response, peer) = self.send(parts, body, &mut observer).await;
        let (response, outcome) = match stale {
            Some(stored) if response.status() == StatusCode::NOT_MODIFIED => (
                self.revalidated(&lookup, slot, &stored, response, &asked),
                Outcome::Revalidated,
            ),
            Some(_) => (
                self.keep(&lookup, &asked, slot, response).await,
                Outcome::Stale,
            ),
            None => (
                self.keep(&lookup, &asked, slot, response).await,
                Outcome::Miss,
            ),
        };
        self.finish(version, response, &peer, outcome, observer)
    }

    async fn send(
        &self,
        parts: Parts,
        body: Incoming,
        observer: &mut RequestObserver,
    ) -> (Response<ResponseBody>, Arc<str>) {
        let (target, route) = (self.target, self.route);
        self.conn
            .send(
                target,
                route,
                self.matched_prefix,
                parts,
                body,
                self.start,
                observer,
            )
            .await
    }

    fn finish(
        &self,
        version: http::Version,
        mut response: Response<ResponseBody>,
        peer: &Arc<str>,
        outcome: Outcome,
        observer: RequestObserver,
    ) -> Response<ResponseBody> {
        self.route.metrics.action(outcome.action());
        response
            .headers_mut()
            .insert(CACHE_HEADER, outcome.header());
        self.conn
            .finish(self.route, version, response, peer, self.start, observer)
    }

    /// The origin confirmed a stale entry: its fields refresh the entry, which is
    /// kept again if it still may be, and answers.
    fn revalidated(
        &self,
        lookup: &cache::Lookup,
        slot: Slot<'_>,
        stored: &Stored,
        confirmed: Response<ResponseBody>,
        asked: &HeaderMap,
    ) -> Response<ResponseBody> {
        let mut fields = confirmed.headers().clone();
        strip_hop_by_hop(&mut fields);
        let headers = cache::detached(&cache::refresh(&stored.headers, &fields));
        let now = Instant::now();
        let kept = self.storable(lookup, stored.status, &headers);
        let refreshed = Arc::new(Stored {
            status: stored.status,
            freshness: kept.clone().unwrap_or_else(|_| stored.freshness.clone()),
            headers,
            body: stored.body.clone(),
            stored_at: now,
        });
        match kept {
            Ok(_) => self.fill(lookup, asked, slot, Arc::clone(&refreshed)),
            Err(why) => self.pass(slot, why),
        }
        served(&refreshed, now, asked)
    }

    /// Keeps the upstream's answer if it may be kept (in `slot`), and returns
    /// what the caller gets: the kept answer (a `304` where its preconditions
    /// hold), or the upstream's as it came, the slot then marked to pass.
    async fn keep(
        &self,
        lookup: &cache::Lookup,
        asked: &HeaderMap,
        slot: Slot<'_>,
        response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let freshness = match self.storable(lookup, response.status(), response.headers()) {
            Ok(freshness) => freshness,
            Err(why) => {
                self.pass(slot, why);
                return response;
            }
        };
        let limit = self.cache.max_body_bytes;
        if response.body().size_hint().lower() > limit {
            self.pass(slot, NotStored::TooLarge);
            return response;
        }
        let (mut head, body) = response.into_parts();
        let deadline = self.route.timeout.map(|t| self.start + t);
        let body = match read(body, limit, deadline).await {
            Ok(Read::Whole(body)) => body,
            Ok(Read::Partial(read, rest)) => {
                self.pass(slot, NotStored::TooLarge);
                let body = ResponseBody::Resumed(Box::new(Resumed { read, rest }));
                return Response::from_parts(head, body);
            }
            Err(e) => {
                // A broken answer says nothing about the next one: the slot is
                // left for the next request.
                tracing::debug!(route = %self.route.name, error = %e, "upstream body failed");
                return HttpError::Upstream {
                    endpoint: self.target.port.service.to_string(),
                    reason: e.to_string(),
                }
                .response();
            }
        };
        strip_hop_by_hop(&mut head.headers);
        let now = Instant::now();
        let stored = Arc::new(Stored {
            status: head.status,
            headers: cache::detached(&head.headers),
            body,
            stored_at: now,
            freshness,
        });
        self.fill(lookup, asked, slot, Arc::clone(&stored));
        served(&stored, now, asked)
    }

    fn fill(&self, lookup: &cache::Lookup, asked: &HeaderMap, slot: Slot<'_>, stored: Arc<Stored>) {
        let vacant = match slot {
            Slot::Vacant(key, guard) => Some((key, guard)),
            Slot::Taken(_) | Slot::Passing => None,
        };
        self.cache
            .store
            .fill(&lookup.primary, asked, vacant, stored);
    }

    fn pass(&self, slot: Slot<'_>, why: NotStored) {
        tracing::debug!(route = %self.route.name, ?why, "answer not kept");
        match slot {
            Slot::Vacant(key, guard) => self.cache.store.pass(key.clone(), Some((key, guard))),
            Slot::Taken(key) => self.cache.store.pass(key, None),
            Slot::Passing => {}
        }
    }

    fn storable(
        &self,
        lookup: &cache::Lookup,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<freshness::Storable, NotStored> {
        freshness::storable(
            status,
            headers,
            lookup.authorized,
            &self.cache.limits,
            SystemTime::now(),
        )
    }
}

/// A kept answer as served to a request with fields `asked`.
fn served(stored: &Stored, now: Instant, asked: &HeaderMap) -> Response<ResponseBody> {
    let not_modified = cache::not_modified(asked, stored);
    let (status, headers) = cache::answer(stored, now, not_modified);
    let body = if not_modified {
        Bytes::new()
    } else {
        stored.body.clone()
    };
    let mut response = Response::new(ResponseBody::local(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Reads `body` whole if it ends within `limit` bytes, no trailers and by
/// `deadline`; otherwise hands back what was read and the rest.
async fn read<B>(mut body: B, limit: u64, deadline: Option<Instant>) -> Result<Read<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut whole = BytesMut::new();
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    loop {
        let next = body.frame();
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), next).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => next.await,
        };
        let frame = match next {
            None => return Ok(Read::Whole(whole.freeze())),
            Some(frame) => frame?,
        };
        let Some(data) = frame.data_ref() else {
            frames.push_back(frame);
            break;
        };
        if (whole.len() + data.len()) as u64 > limit {
            frames.push_back(frame);
            break;
        }
        whole.extend_from_slice(data);
    }
    if !whole.is_empty() {
        frames.push_front(Frame::data(whole.freeze()));
    }
    Ok(Read::Partial(frames, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Frames = StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    fn body(frames: Vec<Frame<Bytes>>) -> Frames {
        StreamBody::new(futures::stream::iter(
            frames.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    fn data(text: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(text.as_bytes()))
    }

    /// Everything a partial read hands back, in order: what was read, then the rest.
    async fn replayed(read: VecDeque<Frame<Bytes>>, rest: Frames) -> (Vec<u8>, bool) {
        let mut bytes = Vec::new();
        let mut trailers = false;
        let rest = rest.collect().await.unwrap();
        for frame in read {
            match frame.into_data() {
                Ok(d) => bytes.extend_from_slice(&d),
                Err(_) => trailers = true,
            }
        }
        trailers |= rest.trailers().is_some();
        bytes.extend_from_slice(&rest.to_bytes());
        (bytes, trailers)
    }

    #[tokio::test]
    async fn a_body_within_the_bound_is_read_whole() {
        let read = read(body(vec![data("ab"), data("cd")]), 4, None)
            .await
            .unwrap();
        assert!(matches!(read, Read::Whole(b) if b == "abcd"));
    }

    #[tokio::test]
    async fn a_larger_body_comes_back_whole_and_in_order() {
        let frames = vec![data("ab"), data("cd"), data("ef"), data("gh")];
        let Read::Partial(read, rest) = read(body(frames), 3, None).await.unwrap() else {
            panic!("over the bound");
        };
        assert_eq!(replayed(read, rest).await, (b"abcdefgh".to_vec(), false));
    }

    #[tokio::test]
    async fn trailers_end_the_read_and_are_handed_on() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![data("ab"), Frame::trailers(trailers)];
        let Read::Partial(read, rest) = read(body(frames), 100, None).await.unwrap() else {
            panic!("trailers are not kept");
        };
        assert_eq!(replayed(read, rest).await, (b"ab".to_vec(), true));
    }
}
