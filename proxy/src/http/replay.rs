//! A request body that can be sent again: the first try streams the caller's body
//! while recording it (up to [`MAX_REPLAY_BYTES`]), and a retry replays the record and
//! then continues with whatever the caller has not sent yet.
//!
//! Recording while streaming matters: a streaming client (gRPC) may wait for a
//! response before it sends more, so buffering first would deadlock. A body that
//! grows past the limit drops its record and can no longer be retried; the try in
//! flight keeps streaming. Each replay fences the ones before it (a timed-out try the
//! client library has not dropped yet cannot steal bytes from the next one).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, Polled};
use super::tee::CallerBody;

/// Largest request body kept for retries (64 KiB); larger bodies are sent once.
pub(crate) const MAX_REPLAY_BYTES: usize = 64 * 1024;

#[derive(Debug)]
struct State {
    /// The caller's body; `None` once it ended or failed.
    source: Option<CallerBody>,
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    overflowed: bool,
    failed: bool,
    /// The generation allowed to read; older replays are fenced off.
    active: u64,
}

/// One try's view of a recorded request body; see the module docs.
#[derive(Debug)]
pub(crate) struct ReplayBody {
    shared: Arc<Mutex<State>>,
    generation: u64,
    next: usize,
    trailers_done: bool,
    hint: SizeHint,
}

impl ReplayBody {
    /// Starts recording `body` (call only for bodies that are not already empty).
    pub(crate) fn new(body: CallerBody) -> ReplayBody {
        let hint = body.size_hint();
        ReplayBody {
            shared: Arc::new(Mutex::new(State {
                source: Some(body),
                chunks: Vec::new(),
                len: 0,
                trailers: None,
                ended: false,
                overflowed: false,
                failed: false,
                active: 0,
            })),
            generation: 0,
            next: 0,
            trailers_done: false,
            hint,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panicking holder is fine.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A body for the next try, starting from the first byte; `None` when the body
    /// outgrew [`MAX_REPLAY_BYTES`] or failed, so it cannot be sent again.
    pub(crate) fn replay(&self) -> Option<ReplayBody> {
        let mut state = self.state();
        if state.overflowed || state.failed {
            return None;
        }
        state.active += 1;
        Some(ReplayBody {
            shared: Arc::clone(&self.shared),
            generation: state.active,
            next: 0,
            trailers_done: false,
            hint: self.hint,
        })
    }

    /// Whether a retry could still send this body.
    pub(crate) fn is_replayable(&self) -> bool {
        let state = self.state();
        !(state.overflowed || state.failed)
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        let shared = Arc::clone(&this.shared);
        let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if state.active != this.generation {
            return Poll::Ready(Some(Err("request body taken over by a retry".into())));
        }
        if let Some(chunk) = state.chunks.get(this.next) {
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if state.ended {
            if !this.trailers_done {
                this.trailers_done = true;
                if let Some(trailers) = &state.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                }
            }
            return Poll::Ready(None);
        }
        if state.failed {
            return Poll::Ready(Some(
                Err("the request body failed in an earlier try".into()),
            ));
        }
        let Some(source) = state.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.ended = true;
                state.source = None;
                this.trailers_done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                state.failed = true;
                state.source = None;
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !state.overflowed {
                        state.len += data.len();
                        if state.len > MAX_REPLAY_BYTES {
                            state.overflowed = true;
                            state.chunks = Vec::new();
                            this.next = 0;
                        } else {
                            state.chunks.push(data.clone());
                            this.next = state.chunks.len();
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        state.trailers = Some(trailers.clone());
                        state.ended = true;
                        state.source = None;
                        this.trailers_done = true;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.state();
        state.active == self.generation
            && state.ended
            && self.next >= state.chunks.len()
            && (self.trailers_done || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
