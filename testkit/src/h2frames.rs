//! Raw HTTP/2 for tests that must send what no HTTP/2 library would: frames written
//! by hand (RFC 9113 §4), header blocks in the simplest HPACK form (RFC 7541 §6.2.2,
//! "literal without indexing, new name", strings not Huffman-coded), so any byte can
//! go into a name or value; and the reading side, which splits what a server sends
//! back into frames and tells what it did to one stream: the status of its response,
//! a `RST_STREAM`, or the connection's `GOAWAY`.
//!
//! [`exchange`] speaks h2c with prior knowledge: the client preface, an empty
//! `SETTINGS`, the given frames, then everything the server answers.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest frame payload a peer takes before it says otherwise (RFC 9113 §4.2).
pub const DEFAULT_MAX_FRAME: usize = 16_384;

/// Frame types (RFC 9113 §6).
pub mod kind {
    /// `DATA`.
    pub const DATA: u8 = 0x0;
    /// `HEADERS`.
    pub const HEADERS: u8 = 0x1;
    /// `PRIORITY`.
    pub const PRIORITY: u8 = 0x2;
    /// `RST_STREAM`.
    pub const RST_STREAM: u8 = 0x3;
    /// `SETTINGS`.
    pub const SETTINGS: u8 = 0x4;
    /// `PUSH_PROMISE`.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// `PING`.
    pub const PING: u8 = 0x6;
    /// `GOAWAY`.
    pub const GOAWAY: u8 = 0x7;
    /// `WINDOW_UPDATE`.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// `CONTINUATION`.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    /// `END_STREAM` on `DATA` and `HEADERS`.
    pub const END_STREAM: u8 = 0x1;
    /// `ACK` on `SETTINGS` and `PING`.
    pub const ACK: u8 = 0x1;
    /// `END_HEADERS` on `HEADERS` and `CONTINUATION`.
    pub const END_HEADERS: u8 = 0x4;
    /// `PADDED` on `DATA` and `HEADERS`.
    pub const PADDED: u8 = 0x8;
    /// `PRIORITY` on `HEADERS`.
    pub const PRIORITY: u8 = 0x20;
}

/// One frame: its type, flags, stream id (31 bits) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The type, one of [`kind`].
    pub kind: u8,
    /// The flags, from [`flag`].
    pub flags: u8,
    /// The stream id (0: the connection).
    pub stream: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame of any type.
    pub fn new(kind: u8, flags: u8, stream: u32, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind,
            flags,
            stream,
            payload: payload.into(),
        }
    }

    /// `SETTINGS` with `(identifier, value)` parameters, on stream 0.
    pub fn settings(params: &[(u16, u32)]) -> Frame {
        let mut payload = Vec::with_capacity(params.len() * 6);
        for (id, value) in params {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        Frame::new(kind::SETTINGS, 0, 0, payload)
    }

    /// `HEADERS` carrying `block` (see [`header_block`]).
    pub fn headers(stream: u32, flags: u8, block: impl Into<Vec<u8>>) -> Frame {
        Frame::new(kind::HEADERS, flags, stream, block)
    }

    /// `CONTINUATION` carrying more of a header block.
    pub fn continuation(stream: u32, flags: u8, block: impl Into<Vec<u8>>) -> Frame {
        Frame::new(kind::CONTINUATION, flags, stream, block)
    }

    /// `DATA`.
    pub fn data(stream: u32, flags: u8, bytes: impl Into<Vec<u8>>) -> Frame {
        Frame::new(kind::DATA, flags, stream, bytes)
    }

    /// A header block too large for one frame: `HEADERS` with `flags` (less
    /// `END_HEADERS`) and the first `max` bytes, then `CONTINUATION`s of at most `max`
    /// bytes, the last with `END_HEADERS`.
    pub fn header_frames(stream: u32, flags: u8, block: &[u8], max: usize) -> Vec<Frame> {
        let mut chunks: Vec<&[u8]> = block.chunks(max.max(1)).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                let end = if i == last { flag::END_HEADERS } else { 0 };
                if i == 0 {
                    Frame::headers(stream, (flags & !flag::END_HEADERS) | end, chunk)
                } else {
                    Frame::continuation(stream, end, chunk)
                }
            })
            .collect()
    }

    /// The frame on the wire: the 9-byte header (24-bit length, type, flags, reserved
    /// bit clear, stream id) and the payload. Panics on a payload past 2^24 - 1
    /// bytes, which no frame can carry.
    pub fn bytes(&self) -> Vec<u8> {
        let len = u32::try_from(self.payload.len())
            .ok()
            .filter(|l| *l < 1 << 24)
            .expect("a frame payload fits in 24 bits");
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// An HPACK integer with an `prefix`-bit prefix, the byte's other bits `high`
/// (RFC 7541 §5.1).
fn integer(value: usize, prefix: u8, high: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn string(bytes: &[u8], out: &mut Vec<u8>) {
    integer(bytes.len(), 7, 0, out);
    out.extend_from_slice(bytes);
}

/// Appends one field as "literal header field without indexing, new name" (RFC 7541
/// §6.2.2): the bytes go on the wire exactly as given, whatever they are.
pub fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    string(name, out);
    string(value, out);
}

/// A header block of `fields` in order, each a [`literal`].
pub fn header_block<N: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(N, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        literal(name.as_ref(), value.as_ref(), &mut out);
    }
    out
}

/// What a client sends first: the preface and an empty `SETTINGS`, then `frames`.
pub fn connection(frames: &[Frame]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend_from_slice(&Frame::settings(&[]).bytes());
    for frame in frames {
        out.extend_from_slice(&frame.bytes());
    }
    out
}

/// The whole frames at the start of `bytes`, in order; a partial frame at the end is
/// left out.
pub fn parse(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        frames.push(Frame::new(rest[3], rest[4], stream, payload));
        rest = &rest[9 + len..];
    }
    frames
}

/// What a server did that a test asserts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A response head on the stream, with its `:status`.
    Status(u16),
    /// `RST_STREAM` on the stream, with its error code.
    Reset(u32),
    /// `GOAWAY` (for the whole connection), with its error code.
    GoAway(u32),
}

/// The name of an HTTP/2 error code (RFC 9113 §7).
pub fn error_name(code: u32) -> String {
    let name = match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        other => return format!("0x{other:x}"),
    };
    name.to_string()
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Status(status) => write!(f, "{status}"),
            Event::Reset(code) => write!(f, "RST_STREAM({})", error_name(*code)),
            Event::GoAway(code) => write!(f, "GOAWAY({})", error_name(*code)),
        }
    }
}

/// The events in `frames` (all a server sent, in order) that concern `stream`: the
/// status of each response head on it (1xx included; trailers have none), its
/// resets, and the connection's `GOAWAY`s. Every header block is decoded, in order,
/// with one HPACK decoder, as its dynamic table requires; a block that does not
/// decode ends the list.
pub fn events(frames: &[Frame], stream: u32) -> Vec<Event> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut events = Vec::new();
    // The header block being gathered: its stream and bytes so far.
    let mut block: Option<(u32, Vec<u8>)> = None;
    for frame in frames {
        let ended = match frame.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                let fragment = header_fragment(frame);
                block = Some((frame.stream, fragment.to_vec()));
                frame.flags & flag::END_HEADERS != 0
            }
            kind::CONTINUATION => {
                if let Some((_, bytes)) = block.as_mut() {
                    bytes.extend_from_slice(&frame.payload);
                }
                frame.flags & flag::END_HEADERS != 0
            }
            kind::RST_STREAM if frame.stream == stream => {
                events.push(Event::Reset(code_of(&frame.payload, 0)));
                false
            }
            kind::GOAWAY => {
                events.push(Event::GoAway(code_of(&frame.payload, 4)));
                false
            }
            _ => false,
        };
        if !ended {
            continue;
        }
        let Some((on, bytes)) = block.take() else {
            continue;
        };
        let Ok(fields) = decoder.decode(&bytes) else {
            break;
        };
        if on != stream {
            continue;
        }
        let status = fields
            .iter()
            .find(|(name, _)| name == b":status")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok());
        if let Some(status) = status {
            events.push(Event::Status(status));
        }
    }
    events
}

/// The header block fragment of a `HEADERS` or `PUSH_PROMISE` frame: its payload
/// less padding, priority fields and the promised stream id.
fn header_fragment(frame: &Frame) -> &[u8] {
    let p = &frame.payload;
    let (mut start, mut end) = (0, p.len());
    if frame.flags & flag::PADDED != 0 {
        let pad = p.first().copied().unwrap_or(0) as usize;
        start += 1;
        end = end.saturating_sub(pad);
    }
    if frame.kind == kind::HEADERS && frame.flags & flag::PRIORITY != 0 {
        start += 5;
    }
    if frame.kind == kind::PUSH_PROMISE {
        start += 4;
    }
    p.get(start..end.max(start)).unwrap_or(&[])
}

/// The 32-bit error code at `at` in a `RST_STREAM` or `GOAWAY` payload.
fn code_of(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(u32::MAX)
}

/// The events as one line, e.g. `431 RST_STREAM(REFUSED_STREAM)`; `closed` when the
/// server closed with none, `nothing` when it stayed open and silent.
pub fn summary(events: &[Event], closed: bool) -> String {
    if events.is_empty() {
        return if closed { "closed" } else { "nothing" }.to_string();
    }
    events
        .iter()
        .map(Event::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Connects to `target`, sends `bytes` (see [`connection`]) while reading, and
/// reads until the server closes, `quiet` passes without a byte after it did
/// something to `stream` (answered, reset, went away), or `limit` passes. Answers
/// [`summary`] of what it did. Writing stops quietly if the server closes first.
pub async fn exchange(
    target: SocketAddr,
    bytes: Vec<u8>,
    stream: u32,
    quiet: Duration,
    limit: Duration,
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(target).await?;
    let (mut rx, mut tx) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(&bytes).await;
        // Hold the write half open (dropping it sends FIN) until the reader is done.
        tx
    });
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    loop {
        let decided = !events(&parse(&got), stream).is_empty();
        let until = if decided {
            (Instant::now() + quiet).min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, rx.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    writer.abort();
    Ok(summary(&events(&parse(&got), stream), closed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_rfc_7541_c1() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        integer(10, 5, 0, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        integer(1337, 5, 0, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        out.clear();
        integer(127, 7, 0, &mut out);
        assert_eq!(out, [0x7f, 0x00]);
    }

    #[test]
    fn a_literal_is_rfc_7541_c2_2_without_indexing() {
        // C.2.2 uses an indexed name; the same field with a new name is
        // 0x00, name length, name, value length, value.
        let block = header_block(&[(":path", "/sample/path")]);
        let mut want = vec![0x00, 5];
        want.extend_from_slice(b":path");
        want.push(12);
        want.extend_from_slice(b"/sample/path");
        assert_eq!(block, want);
    }

    #[test]
    fn any_byte_round_trips_through_a_real_decoder() {
        let long = "v".repeat(300);
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b"X-Upper", b"a\r\nb\0c"),
            (b"", b""),
            (b"long", long.as_bytes()),
        ];
        let decoded = loona_hpack::Decoder::new()
            .decode(&header_block(&fields))
            .unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = fields
            .iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(decoded, want);
    }

    #[test]
    fn frames_have_the_rfc_9113_layout_and_parse_back() {
        let f = Frame::data(3, flag::END_STREAM, b"hi".to_vec());
        assert_eq!(f.bytes(), [0, 0, 2, 0, 1, 0, 0, 0, 3, b'h', b'i']);
        let s = Frame::settings(&[(0x3, 100)]);
        assert_eq!(s.bytes(), [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        let mut wire = f.bytes();
        wire.extend_from_slice(&s.bytes());
        wire.extend_from_slice(&[0, 0, 9, 0]); // a partial frame
        assert_eq!(parse(&wire), vec![f, s]);
        let conn = connection(&[]);
        assert!(conn.starts_with(PREFACE));
        assert_eq!(&conn[PREFACE.len()..], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_large_block_goes_out_as_headers_and_continuations() {
        let block = vec![7u8; 10];
        let frames = Frame::header_frames(1, flag::END_STREAM | flag::END_HEADERS, &block, 4);
        let shape: Vec<(u8, u8, usize)> = frames
            .iter()
            .map(|f| (f.kind, f.flags, f.payload.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (kind::HEADERS, flag::END_STREAM, 4),
                (kind::CONTINUATION, 0, 4),
                (kind::CONTINUATION, flag::END_HEADERS, 2),
            ]
        );
        let one = Frame::header_frames(1, 0, &[], 4);
        assert_eq!(one, vec![Frame::headers(1, flag::END_HEADERS, vec![])]);
    }

    #[test]
    fn events_read_statuses_resets_and_goaways() {
        // A response head on stream 1 split over HEADERS (padded, with priority) and
        // CONTINUATION, one on stream 3, then a reset of 1 and a GOAWAY.
        let block = header_block(&[(":status", "431"), ("x", "y")]);
        let mut padded = vec![2u8, 0, 0, 0, 0, 16];
        padded.extend_from_slice(&block[..4]);
        padded.extend_from_slice(&[0, 0]);
        let frames = vec![
            Frame::headers(1, flag::PADDED | flag::PRIORITY, padded),
            Frame::continuation(1, flag::END_HEADERS, block[4..].to_vec()),
            Frame::headers(3, flag::END_HEADERS, header_block(&[(":status", "200")])),
            Frame::new(kind::RST_STREAM, 0, 1, 7u32.to_be_bytes().to_vec()),
            Frame::new(kind::GOAWAY, 0, 0, [0, 0, 0, 1, 0, 0, 0, 1]),
        ];
        let got = events(&frames, 1);
        assert_eq!(got, [Event::Status(431), Event::Reset(7), Event::GoAway(1)]);
        assert_eq!(
            summary(&got, true),
            "431 RST_STREAM(REFUSED_STREAM) GOAWAY(PROTOCOL_ERROR)"
        );
        assert_eq!(events(&frames, 3), [Event::Status(200), Event::GoAway(1)]);
        assert_eq!(summary(&[], true), "closed");
        assert_eq!(summary(&[], false), "nothing");
        assert_eq!(error_name(0x42), "0x42");
    }
}
