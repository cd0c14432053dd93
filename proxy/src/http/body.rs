//! The body types the HTTP layer moves: request bodies sent upstream (streamed, or
//! replayable for retries) and response bodies returned downstream (the upstream's,
//! or a short one the proxy wrote itself). Enums rather than boxes, so forwarding a
//! request allocates nothing for its body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::replay::ReplayBody;
use super::tee::CallerBody;
use crate::telemetry::{ObservedBody, RequestObserver};
use crate::upstream::pool::UpstreamBody;

/// The error type of every body the proxy forwards.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What polling any of the proxy's bodies answers.
pub(crate) type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// Polls a body whose own error type is boxed on the way out.
fn poll_boxed<B>(body: &mut B, cx: &mut Context<'_>) -> Polled
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    Pin::new(body)
        .poll_frame(cx)
        .map(|f| f.map(|r| r.map_err(Into::into)))
}

/// A request body on its way upstream.
#[derive(Debug, Default)]
pub(crate) enum RequestBody {
    /// No body at all (most `GET`s).
    #[default]
    Empty,
    /// The caller's body, streamed once (and copied for a mirror when it has one).
    Stream(CallerBody),
    /// A whole body held in memory (a mirror's copy); `None` once sent.
    Whole(Option<Bytes>),
    /// The caller's body, recorded so a retry can send it again.
    Replay(ReplayBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream(body) => poll_boxed(body, cx),
            RequestBody::Replay(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream(body) => body.is_end_stream(),
            RequestBody::Replay(body) => body.is_end_stream(),
            RequestBody::Whole(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream(body) => body.size_hint(),
            RequestBody::Replay(body) => body.size_hint(),
            RequestBody::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A response body on its way downstream.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// What the upstream sent, streamed through (trailers included).
    Upstream(UpstreamBody),
    /// A body the proxy made (an error reason); `None` once sent.
    Local(Option<Bytes>),
    /// Either of the above, finishing the request's span and access log line when
    /// it ends.
    Observed(Box<ObservedBody<ResponseBody>>),
    /// Frames already read from a body (by a cache that found it too large to
    /// keep), then the rest of it.
    Resumed(Box<Resumed>),
}

/// A body whose first frames were read before it was returned.
#[derive(Debug)]
pub(crate) struct Resumed {
    /// The frames read, in order.
    pub read: std::collections::VecDeque<Frame<Bytes>>,
    /// What is left of the body.
    pub rest: ResponseBody,
}

impl ResponseBody {
    /// A body of fixed bytes (empty for none).
    pub(crate) fn local(bytes: impl Into<Bytes>) -> ResponseBody {
        let bytes = bytes.into();
        ResponseBody::Local((!bytes.is_empty()).then_some(bytes))
    }

    /// Makes the body empty, its telemetry kept (an answer sent trailers-only).
    pub(crate) fn empty(&mut self) {
        match self {
            ResponseBody::Observed(body) => body.inner_mut().empty(),
            other => *other = ResponseBody::Local(None),
        }
    }

    /// `response` with its telemetry finishing when its body ends; unchanged (no
    /// wrapping, no cost) when the observer records nothing.
    pub(crate) fn observed(
        observer: RequestObserver,
        response: http::Response<ResponseBody>,
    ) -> http::Response<ResponseBody> {
        if !observer.is_active() {
            return response;
        }
        let status = response.status();
        response.map(|body| ResponseBody::Observed(Box::new(observer.observe(status, body))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        match self.get_mut() {
            ResponseBody::Upstream(body) => poll_boxed(body, cx),
            ResponseBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Observed(body) => Pin::new(&mut **body).poll_frame(cx),
            ResponseBody::Resumed(body) => match body.read.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(&mut body.rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Local(bytes) => bytes.is_none(),
            ResponseBody::Observed(body) => body.is_end_stream(),
            ResponseBody::Resumed(body) => body.read.is_empty() && body.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Observed(body) => body.size_hint(),
            ResponseBody::Resumed(body) => {
                let read: u64 = (body.read.iter())
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let rest = body.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + read);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + read);
                }
                hint
            }
        }
    }
}

/// The request body's declared size (its exact size hint, e.g. `Content-Length`);
/// a streamed body of unknown length counts its known lower bound.
pub(crate) fn declared_len(body: &impl Body) -> u64 {
    let hint = body.size_hint();
    hint.exact().unwrap_or_else(|| hint.lower())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn local_bodies_send_their_bytes_once() {
        let body = ResponseBody::local("no endpoints\n");
        assert_eq!(body.size_hint().exact(), Some(13));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"no endpoints\n");
        let empty = ResponseBody::local("");
        assert!(empty.is_end_stream());
        assert!(RequestBody::Empty.is_end_stream());
    }
}
