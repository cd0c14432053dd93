//! Who speaks first, on a port nobody declared. A server-first protocol (SMTP, MySQL,
//! an SSH banner) sends nothing from the client, so detection alone would wait its
//! whole deadline before relaying. Instead, once the client has been silent for a
//! short while, the proxy opens the upstream connection it would relay to and
//! listens to both: a server that speaks first is relayed at once, its greeting
//! first; a client that speaks first is detected as usual (and keeps the early
//! connection if its bytes turn out opaque); if nobody speaks by the detection
//! deadline the connection is closed rather than kept as an idle relay.
//!
//! Early connections waiting for a first word are bounded (a [`Budget`] of
//! [`MAX_PROBES`]): a flood of silent clients would otherwise become as many
//! connections to the application, all opened at once and held to the deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Peek, Read};
use crate::transport::budget::Budget;

/// Most of a server's greeting read before the relay takes over.
const GREETING_BYTES: usize = 16 * 1024;

/// Early connections open at once while neither side has spoken. A server that
/// speaks first answers within milliseconds, so each holds its slot that long; only
/// silence on both sides (a flood) fills them, and then further silent clients wait
/// for their detection deadline without one.
pub(crate) const MAX_PROBES: usize = 256;

/// Who spoke first.
#[derive(Debug)]
pub(crate) enum FirstWord<U> {
    /// The client spoke (or closed) first: detect its bytes. `early` is the upstream
    /// connection opened while it was silent, for an opaque relay to reuse.
    Client {
        /// The upstream connection opened during the silence, if any.
        early: Option<U>,
    },
    /// The upstream spoke first: relay, writing `greeting` to the client first.
    Server {
        /// The upstream connection.
        upstream: U,
        /// What the upstream has said so far.
        greeting: Bytes,
    },
    /// Neither side said anything before the detection deadline.
    Silent,
}

/// Waits for the client's first bytes; after `probe_after` of silence (zero: never)
/// opens the upstream with `open`, if one of `probes` is free, and waits for
/// whichever side speaks first. Bytes the client sends are kept in `peek` for
/// detection.
pub(crate) async fn first_word<IO, U, F, Fut>(
    peek: &mut Peek<IO>,
    probe_after: Duration,
    probes: &Arc<Budget>,
    open: F,
) -> FirstWord<U>
where
    IO: AsyncRead + Unpin,
    U: AsyncRead + Unpin,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<U>>,
{
    if !peek.buffered().is_empty() || probe_after.is_zero() {
        return FirstWord::Client { early: None };
    }
    // Reads of `peek` are cancel-safe: a read that has not completed took nothing.
    tokio::select! {
        biased;
        read = peek.read_more() => return after_client(read, None),
        () = tokio::time::sleep(probe_after) => {}
    }
    // Held until a side speaks (or the deadline passes).
    let Some(_slot) = probes.try_acquire() else {
        tracing::debug!("too many silent connections already probed; waiting for the client");
        return FirstWord::Client { early: None };
    };
    let open = open();
    tokio::pin!(open);
    let mut upstream = tokio::select! {
        biased;
        read = peek.read_more() => return after_client(read, None),
        opened = &mut open => match opened {
            Some(upstream) => upstream,
            None => return FirstWord::Client { early: None },
        },
    };
    let mut greeting = BytesMut::with_capacity(GREETING_BYTES);
    tokio::select! {
        biased;
        read = peek.read_more() => after_client(read, Some(upstream)),
        said = upstream.read_buf(&mut greeting) => match said {
            Ok(n) if n > 0 => FirstWord::Server { upstream, greeting: greeting.freeze() },
            // The upstream closed (or failed) without a word: the client's bytes, if
            // any come, decide as if it had never been asked.
            _ => FirstWord::Client { early: None },
        },
    }
}

/// The client's read ended the wait.
fn after_client<U>(read: Read, early: Option<U>) -> FirstWord<U> {
    match read {
        Read::Timeout => FirstWord::Silent,
        Read::More | Read::Eof | Read::Full => FirstWord::Client { early },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};

    const PROBE: Duration = Duration::from_millis(200);
    const DEADLINE: Duration = Duration::from_secs(10);

    /// An upstream that is never opened: opening it fails the test.
    async fn untouched() -> Option<DuplexStream> {
        panic!("the upstream must not be opened");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_speaks_at_once_opens_nothing() {
        let (a, mut client) = duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut peek = Peek::new(a, DEADLINE);
        let word = first_word(&mut peek, PROBE, &Budget::new(8), untouched).await;
        assert!(matches!(word, FirstWord::Client { early: None }));
        assert_eq!(peek.buffered(), b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_speaks_first_is_heard_soon() {
        let (a, _client) = duplex(64);
        let (up, mut server) = duplex(64);
        let mut peek = Peek::new(a, DEADLINE);
        let started = tokio::time::Instant::now();
        let greet = async move {
            server.write_all(b"220 mail ready\r\n").await.unwrap();
            Some(up)
        };
        let word = first_word(&mut peek, PROBE, &Budget::new(8), || greet).await;
        let FirstWord::Server { greeting, .. } = word else {
            panic!("expected the server's word, got {word:?}");
        };
        assert_eq!(&greeting[..], b"220 mail ready\r\n");
        assert_eq!(started.elapsed(), PROBE);
        assert!(peek.buffered().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_keeps_the_early_connection() {
        let (a, mut client) = duplex(64);
        let (up, _server) = duplex(64);
        let mut peek = Peek::new(a, DEADLINE);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"\x00\x01").await.unwrap();
            tokio::time::sleep(DEADLINE).await;
        });
        let word = first_word(&mut peek, PROBE, &Budget::new(8), || async { Some(up) }).await;
        assert!(matches!(word, FirstWord::Client { early: Some(_) }));
        assert_eq!(peek.buffered(), b"\x00\x01");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_on_both_sides_ends_at_the_deadline() {
        let (a, _client) = duplex(64);
        let (up, _server) = duplex(64);
        let mut peek = Peek::new(a, DEADLINE);
        let started = tokio::time::Instant::now();
        let word = first_word(&mut peek, PROBE, &Budget::new(8), || async { Some(up) }).await;
        assert!(matches!(word, FirstWord::Silent));
        assert_eq!(started.elapsed(), DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_cannot_be_reached_leaves_detection_to_the_client() {
        let (a, _client) = duplex(64);
        let mut peek = Peek::new(a, DEADLINE);
        let word = first_word(&mut peek, PROBE, &Budget::new(8), || async {
            None::<DuplexStream>
        })
        .await;
        assert!(matches!(word, FirstWord::Client { early: None }));
    }

    #[tokio::test(start_paused = true)]
    async fn no_probe_while_every_slot_waits() {
        let probes = Budget::new(1);
        let (a, _client) = duplex(64);
        let (up, _server) = duplex(64);
        let mut held = Peek::new(a, DEADLINE);
        let (b, _other) = duplex(64);
        let mut peek = Peek::new(b, DEADLINE);
        let first = first_word(&mut held, PROBE, &probes, || async { Some(up) });
        tokio::pin!(first);
        // The first silent client takes the only slot and keeps it while it waits.
        assert!(tokio::time::timeout(PROBE * 2, &mut first).await.is_err());
        let word = first_word(&mut peek, PROBE, &probes, untouched).await;
        assert!(matches!(word, FirstWord::Client { early: None }));
        assert!(matches!(first.await, FirstWord::Silent));
        // The slot came back when the wait ended.
        assert!(probes.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn no_probe_when_turned_off() {
        let (a, _client) = duplex(64);
        let mut peek = Peek::new(a, DEADLINE);
        let word = first_word(&mut peek, Duration::ZERO, &Budget::new(8), untouched).await;
        assert!(matches!(word, FirstWord::Client { early: None }));
    }
}
