//! HTTP detection: is a connection HTTP/1.x (a request line), HTTP/2 with prior
//! knowledge (the connection preface) or anything else (opaque TCP)?
//!
//! It decides as early as the bytes allow: one byte that cannot start a method means
//! opaque at once; a request line is accepted when its `HTTP/1.x` and line end arrive.
//! Peers that send too little in time are opaque; peers that send nothing at all are
//! [`Reason::Silent`], which the stacks close.

use std::time::Duration;

use tokio::io::AsyncRead;

use super::rewind::Rewind;
use super::{Peek, Read};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token accepted; longer ones are not HTTP anyone speaks.
const MAX_METHOD_LEN: usize = 32;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// Anything else: copied byte for byte.
    Opaque,
}

impl Protocol {
    /// For logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Why detection decided what it did (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The bytes showed the protocol.
    Seen,
    /// Not enough arrived in time.
    Timeout,
    /// Nothing at all arrived in time.
    Silent,
    /// The peer closed first.
    Eof,
    /// [`super::MAX_DETECT_BYTES`] arrived without an answer.
    TooLong,
}

/// The verdict on a buffer of first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The bytes decide it.
    Is(Protocol),
    /// Still a possible HTTP start; read more.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub(crate) fn classify(buf: &[u8]) -> Verdict {
    Classifier::default().classify(buf)
}

/// [`classify`] over a buffer that only grows, looking at each byte of a long request
/// target once however the bytes trickle in (a peer sending one byte per read up to
/// 64 KiB would otherwise cost a rescan of the whole target per read).
#[derive(Debug, Default)]
pub(crate) struct Classifier {
    /// Target bytes already found visible.
    target_seen: usize,
}

impl Classifier {
    /// The verdict on `buf`, which extends the buffer of the previous call.
    pub(crate) fn classify(&mut self, buf: &[u8]) -> Verdict {
        if buf.is_empty() {
            return Verdict::NeedMore;
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] == H2_PREFACE[..n] {
            return if n == H2_PREFACE.len() {
                Verdict::Is(Protocol::Http2)
            } else {
                Verdict::NeedMore
            };
        }
        self.request_line(buf)
    }

    /// `method SP target SP HTTP/1.d CRLF` (a bare LF is accepted, as hyper does).
    fn request_line(&mut self, buf: &[u8]) -> Verdict {
        let opaque = Verdict::Is(Protocol::Opaque);
        let method = buf
            .iter()
            .take(MAX_METHOD_LEN + 1)
            .take_while(|b| is_tchar(**b))
            .count();
        if method == 0 || method > MAX_METHOD_LEN {
            return opaque;
        }
        let Some(&after) = buf.get(method) else {
            return Verdict::NeedMore;
        };
        if after != b' ' {
            return opaque;
        }
        let rest = &buf[method + 1..];
        let seen = self.target_seen.min(rest.len());
        let target = seen
            + rest[seen..]
                .iter()
                .take_while(|b| is_target_byte(**b))
                .count();
        self.target_seen = target;
        version(rest, target)
    }
}

/// The rest of a request line after a method, whose first `target` bytes are the
/// request target.
fn version(rest: &[u8], target: usize) -> Verdict {
    let opaque = Verdict::Is(Protocol::Opaque);
    let Some(&after) = rest.get(target) else {
        return Verdict::NeedMore;
    };
    if target == 0 || after != b' ' {
        return opaque;
    }
    let version = &rest[target + 1..];
    const VERSION: &[u8] = b"HTTP/1.";
    let n = version.len().min(VERSION.len());
    if version[..n] != VERSION[..n] {
        return opaque;
    }
    match version.get(VERSION.len()) {
        None => Verdict::NeedMore,
        Some(d) if d.is_ascii_digit() => match &version[VERSION.len() + 1..] {
            [] | [b'\r'] => Verdict::NeedMore,
            [b'\n', ..] | [b'\r', b'\n', ..] => Verdict::Is(Protocol::Http1),
            _ => opaque,
        },
        Some(_) => opaque,
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Visible ASCII (what a request target may hold).
fn is_target_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// Reads `io`'s first bytes until they show the protocol, within `timeout`; answers
/// the verdict and a stream that yields every byte from the first.
#[cfg(test)]
pub(crate) async fn detect<IO>(io: IO, timeout: Duration) -> (Protocol, Reason, Rewind<IO>)
where
    IO: AsyncRead + Unpin,
{
    detect_peeked(Peek::new(io, timeout)).await
}

/// [`detect`] on a connection whose first bytes are already (partly) buffered, e.g.
/// by the mesh TLS detector, within the same deadline.
pub(crate) async fn detect_peeked<IO>(mut peek: Peek<IO>) -> (Protocol, Reason, Rewind<IO>)
where
    IO: AsyncRead + Unpin,
{
    let mut classifier = Classifier::default();
    let (protocol, reason) = loop {
        if let Verdict::Is(p) = classifier.classify(peek.buffered()) {
            break (p, Reason::Seen);
        }
        match peek.read_more().await {
            Read::More => {}
            Read::Eof => break (Protocol::Opaque, Reason::Eof),
            Read::Timeout if peek.buffered().is_empty() => {
                break (Protocol::Opaque, Reason::Silent)
            }
            Read::Timeout => break (Protocol::Opaque, Reason::Timeout),
            Read::Full => break (Protocol::Opaque, Reason::TooLong),
        }
    };
    (protocol, reason, peek.into_rewind())
}

/// What a connection to a port where HTTP policy lives turned out to be. Such a port
/// never relays bytes: whatever is not HTTP is refused with a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strict {
    /// HTTP/2 (the preface) or HTTP/1 (anything else, for hyper's parser to accept
    /// or answer 400): serve it.
    Serve(Protocol),
    /// Nothing, or no whole request line, within the header-read timeout: 408.
    Silent,
    /// No request line within [`super::MAX_DETECT_BYTES`]: 414.
    TooLong,
    /// The peer closed first: nothing to answer.
    Closed,
}

/// Detection on a port where HTTP policy lives: no opaque fallback. The peer gets
/// `header_timeout` (at least) for its first request line, so a client that connects
/// early and sends late keeps its policy; empty lines before it are allowed
/// (RFC 9112 §2.2), and hyper's parser judges the rest.
pub(crate) async fn detect_strict<IO>(
    mut peek: Peek<IO>,
    header_timeout: Duration,
) -> (Strict, Rewind<IO>)
where
    IO: AsyncRead + Unpin,
{
    peek.wait_at_least(header_timeout);
    let mut line = FirstLine::default();
    let verdict = loop {
        if let Some(done) = line.verdict(peek.buffered()) {
            break done;
        }
        match peek.read_more().await {
            Read::More => {}
            Read::Eof => break Strict::Closed,
            Read::Timeout => break Strict::Silent,
            Read::Full => break Strict::TooLong,
        }
    };
    (verdict, peek.into_rewind())
}

/// The strict verdict on a connection's first bytes, looking at each byte once
/// however they trickle in (a peer sending one byte at a time costs no more).
#[derive(Debug, Default)]
struct FirstLine {
    /// Bytes already looked at.
    seen: usize,
    /// Past the empty lines before the request line.
    started: bool,
    /// The last byte looked at was a CR inside the line.
    after_cr: bool,
}

impl FirstLine {
    /// `None` while more bytes are needed: the whole preface is HTTP/2; a first line
    /// (after any empty lines) is HTTP/1, whatever it holds, and so is a CR that
    /// does not end one (the parser refuses it at once rather than letting it wait
    /// for a line end that never comes).
    fn verdict(&mut self, buf: &[u8]) -> Option<Strict> {
        let n = buf.len().min(H2_PREFACE.len());
        if self.seen == 0 && n > 0 && buf[..n] == H2_PREFACE[..n] {
            return (n == H2_PREFACE.len()).then_some(Strict::Serve(Protocol::Http2));
        }
        let new = buf.get(self.seen..).unwrap_or_default();
        self.seen = buf.len();
        for &b in new {
            if !self.started {
                if matches!(b, b'\r' | b'\n') {
                    continue;
                }
                self.started = true;
            }
            if b == b'\n' || self.after_cr {
                return Some(Strict::Serve(Protocol::Http1));
            }
            self.after_cr = b == b'\r';
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::MAX_DETECT_BYTES;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    /// A peer that sends a request line longer than the detection limit, then waits.
    fn endless_line() -> tokio::io::DuplexStream {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut line = b"GET /".to_vec();
        line.resize(MAX_DETECT_BYTES + 100, b'a');
        tokio::spawn(async move {
            let _ = b.write_all(&line).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        a
    }

    fn is(p: Protocol) -> Verdict {
        Verdict::Is(p)
    }

    #[test]
    fn request_lines_are_http1() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /api/items?x=1 HTTP/1.0\r\nHost: a\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\n",
            b"M-SEARCH * HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(line), is(Protocol::Http1), "{line:?}");
        }
    }

    #[test]
    fn partial_lines_ask_for_more() {
        let line = b"GET /index.html HTTP/1.1\r\n";
        for n in 1..line.len() - 1 {
            assert_eq!(classify(&line[..n]), Verdict::NeedMore, "{n}");
        }
        for n in 1..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..n]), Verdict::NeedMore, "{n}");
        }
    }

    #[test]
    fn the_preface_is_http2() {
        assert_eq!(classify(H2_PREFACE), is(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(classify(&more), is(Protocol::Http2));
    }

    #[test]
    fn anything_else_is_opaque() {
        for bytes in [
            &[0x16u8, 3, 1, 0, 5][..], // a TLS record
            b"\x00\x00\x00\x01",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.x\r\n",
            b"GET / HTTP/1.1 trailing\r\n",
            b"get\t/ HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX",
            b" GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(bytes), is(Protocol::Opaque), "{bytes:?}");
        }
        let long_method = vec![b'A'; MAX_METHOD_LEN + 1];
        assert_eq!(classify(&long_method), is(Protocol::Opaque));
    }

    #[test]
    fn strict_detection_wants_a_whole_first_line() {
        let http1 = Some(Strict::Serve(Protocol::Http1));
        for (bytes, want) in [
            (&b""[..], None),
            (b"\r\n\r\n", None),
            (b"GET / HTTP/1.1", None),
            (b"GET / HTTP/1.1\r\n", http1),
            (b"\r\n\nGET / HTTP/1.1\r\n", http1),
            // Not HTTP, but a whole line: hyper answers it 400.
            (b"SSH-2.0-OpenSSH_9.6\r\n", http1),
            (b"get / http/1.1\n", http1),
            (b"PRI * HTTP/2.0\r\n", None),
            (H2_PREFACE, Some(Strict::Serve(Protocol::Http2))),
            (b"PRI * HTTP/2.0\r\n\r\nXX\r\n", http1),
            (b"GET / HTTP/1.1\rHost: a", http1),
            (b"GET / HTTP/1.1\r", None),
        ] {
            assert_eq!(FirstLine::default().verdict(bytes), want, "{bytes:?}");
            // The same verdict when the bytes come one at a time.
            let mut line = FirstLine::default();
            let trickled = (1..=bytes.len()).find_map(|n| line.verdict(&bytes[..n]));
            assert_eq!(trickled, want, "{bytes:?} byte by byte");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn strict_detection_waits_for_a_late_first_byte_then_408() {
        let (a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            b.write_all(b"\r\nGET / HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        // The usual detection deadline (10 s) has passed before the first byte.
        let peek = Peek::new(a, Duration::from_secs(10));
        let (verdict, rewind) = detect_strict(peek, Duration::from_secs(30)).await;
        assert_eq!(verdict, Strict::Serve(Protocol::Http1));
        assert_eq!(rewind.prefix(), b"\r\nGET / HTTP/1.1\r\n");

        let (a, _b) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let (verdict, _) = detect_strict(
            Peek::new(a, Duration::from_secs(10)),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(verdict, Strict::Silent);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn strict_detection_refuses_an_endless_line_and_sees_eof() {
        let a = endless_line();
        let peek = Peek::new(a, Duration::from_secs(5));
        let (verdict, _) = detect_strict(peek, Duration::from_secs(5)).await;
        assert_eq!(verdict, Strict::TooLong);

        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let peek = Peek::new(a, Duration::from_secs(5));
        assert_eq!(
            detect_strict(peek, Duration::from_secs(5)).await.0,
            Strict::Closed
        );
    }

    #[tokio::test]
    async fn detection_keeps_every_byte() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            b.write_all(b"GET /x HT").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            b.write_all(b"TP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
            let _ = b.shutdown().await;
        });
        let (p, reason, mut rewind) = detect(a, Duration::from_secs(5)).await;
        assert_eq!((p, reason), (Protocol::Http1, Reason::Seen));
        let mut all = String::new();
        rewind.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn a_growing_buffer_gets_the_verdict_a_whole_one_gets() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(8 * 1024));
        let inputs = [
            long.as_str(),
            "GET /x HTTP/1.1\r\n",
            "GET /x\x01 HTTP/1.1\r\n",
            "GET /x HTTP/1.1 x\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST /a/b?c=d HTTP/1.0\n",
        ];
        for input in inputs {
            let bytes = input.as_bytes();
            let mut grown = Classifier::default();
            for end in 0..=bytes.len() {
                let prefix = &bytes[..end];
                assert_eq!(
                    grown.classify(prefix),
                    classify(prefix),
                    "{:?}",
                    &input[..end.min(40)]
                );
            }
        }
        // A method that never ends is opaque after a bounded look.
        assert_eq!(classify(&[b'G'; 70_000]), Verdict::Is(Protocol::Opaque));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_and_too_little_are_told_apart_at_the_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let (p, reason, rewind) = detect(a, Duration::from_secs(10)).await;
        assert_eq!((p, reason), (Protocol::Opaque, Reason::Silent));
        assert!(rewind.prefix().is_empty());
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"GET /a").await.unwrap();
        let (p, reason, rewind) = detect(a, Duration::from_secs(10)).await;
        assert_eq!((p, reason), (Protocol::Opaque, Reason::Timeout));
        assert_eq!(rewind.prefix(), b"GET /a");
    }

    #[tokio::test]
    async fn eof_and_endless_lines_are_opaque() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let (p, reason, _) = detect(a, Duration::from_secs(5)).await;
        assert_eq!((p, reason), (Protocol::Opaque, Reason::Eof));

        let a = endless_line();
        let (p, reason, rewind) = detect(a, Duration::from_secs(5)).await;
        assert_eq!((p, reason), (Protocol::Opaque, Reason::TooLong));
        assert_eq!(rewind.prefix().len(), MAX_DETECT_BYTES);
    }
}
