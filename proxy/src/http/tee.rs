//! The caller's request body as it goes upstream, optionally copied on the way for a
//! mirror: each data frame is passed on at once and a reference to it kept (no
//! byte is copied, the primary never waits), and when the body ends the copy is
//! handed over whole. A body that grows past [`MAX_MIRROR_BYTES`], fails, or is
//! dropped before its end hands over nothing, and the mirror is not sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// Largest request body a mirror gets a copy of: the bound of a retry's record,
/// one limit for every body the proxy keeps in memory.
pub(crate) const MAX_MIRROR_BYTES: usize = super::replay::MAX_REPLAY_BYTES;

/// The caller's body (`B`: hyper's, but any body in tests), and the copy being
/// kept of it, if any.
#[derive(Debug)]
pub(crate) struct CallerBody<B = Incoming> {
    inner: B,
    copy: Option<Box<Kept>>,
}

/// What is kept of the body so far, and where it goes when the body ends.
#[derive(Debug)]
struct Kept {
    chunks: Vec<Bytes>,
    len: usize,
    done: oneshot::Sender<Bytes>,
}

impl<B> CallerBody<B> {
    /// The body, passed on as it is.
    pub(crate) fn new(inner: B) -> CallerBody<B> {
        CallerBody { inner, copy: None }
    }

    /// The body, with its whole content sent to `done` when it ends.
    pub(crate) fn teed(inner: B, done: oneshot::Sender<Bytes>) -> CallerBody<B> {
        CallerBody {
            inner,
            copy: Some(Box::new(Kept {
                chunks: Vec::new(),
                len: 0,
                done,
            })),
        }
    }

    fn keep(&mut self, frame: &Frame<Bytes>) {
        let Some(copy) = self.copy.as_mut() else {
            return;
        };
        if let Some(data) = frame.data_ref() {
            copy.len += data.len();
            if copy.len > MAX_MIRROR_BYTES {
                self.copy = None;
                return;
            }
            copy.chunks.push(data.clone());
        }
    }

    fn finish(&mut self) {
        if let Some(copy) = self.copy.take() {
            let mut whole = BytesMut::with_capacity(copy.len);
            for chunk in &copy.chunks {
                whole.extend_from_slice(chunk);
            }
            let _ = copy.done.send(whole.freeze());
        }
    }
}

impl<B> Body for CallerBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.keep(frame);
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.copy = None,
            Poll::Pending => {}
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
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunks =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_copy_is_the_whole_body_and_the_primary_gets_every_byte() {
        let (tx, rx) = oneshot::channel();
        let body = CallerBody::teed(chunks(&[b"hello ", b"mirror"]), tx);
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"hello mirror");
        assert_eq!(&rx.await.unwrap()[..], b"hello mirror");
    }

    #[tokio::test]
    async fn no_copy_of_a_body_too_large_or_cut_short() {
        static BIG: [u8; MAX_MIRROR_BYTES] = [7; MAX_MIRROR_BYTES];
        let (tx, rx) = oneshot::channel();
        let body = CallerBody::teed(chunks(&[&BIG, b"!"]), tx);
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent.len(), MAX_MIRROR_BYTES + 1, "the primary is never cut");
        assert!(rx.await.is_err(), "too large: no mirror");

        let (tx, rx) = oneshot::channel();
        let mut body = CallerBody::teed(chunks(&[b"a", b"b"]), tx);
        let _first = body.frame().await;
        drop(body);
        assert!(rx.await.is_err(), "dropped before its end: no mirror");

        // Exactly the limit is still copied; untouched bodies pass as they are.
        let (tx, rx) = oneshot::channel();
        let _ = CallerBody::teed(chunks(&[&BIG]), tx).collect().await;
        assert_eq!(rx.await.unwrap().len(), MAX_MIRROR_BYTES);
        let plain = CallerBody::new(chunks(&[b"x"])).collect().await.unwrap();
        assert_eq!(&plain.to_bytes()[..], b"x");
    }
}
