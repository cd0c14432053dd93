//! Trace and span ids: 16 and 8 random bytes, never all zero, made by a per-thread
//! wyrand generator (seeded once from the OS) so minting one costs a few nanoseconds
//! and never allocates or locks.

use std::cell::Cell;
use std::fmt;

/// A W3C trace id: 16 bytes, not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A W3C span id (parent-id): 8 bytes, not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (which is twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Parses lowercase hex (what W3C and B3 both require) of exactly `N` bytes; `None`
/// on anything else.
pub(crate) fn parse_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> TraceId {
        loop {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&next_u64().to_ne_bytes());
            id[8..].copy_from_slice(&next_u64().to_ne_bytes());
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }

    /// Whether this is the invalid all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The id as 32 lowercase hex digits, on the stack.
    pub fn to_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&self.0, &mut out);
        out
    }

    /// The low 8 bytes as a number: the randomness the ratio sampler compares.
    pub fn low_u64(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    /// A fresh random span id.
    pub fn random() -> SpanId {
        loop {
            let id = next_u64();
            if id != 0 {
                return SpanId(id.to_ne_bytes());
            }
        }
    }

    /// Whether this is the invalid all-zero id.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    /// The id as 16 lowercase hex digits, on the stack.
    pub fn to_hex(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex_into(&self.0, &mut out);
        out
    }
}

macro_rules! hex_display {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let hex = self.to_hex();
                // Hex digits are ASCII, so this never fails.
                f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}
hex_display!(TraceId);
hex_display!(SpanId);

thread_local! {
    static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// wyrand: one multiply-xorshift step per 64 bits, good enough for ids (not secrets).
fn next_u64() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        // Folding the 128-bit product: truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let folded = (t as u64) ^ ((t >> 64) as u64);
        folded
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_random_nonzero_and_distinct() {
        let traces: HashSet<TraceId> = (0..10_000).map(|_| TraceId::random()).collect();
        let spans: HashSet<SpanId> = (0..10_000).map(|_| SpanId::random()).collect();
        assert_eq!((traces.len(), spans.len()), (10_000, 10_000));
        assert!(traces.iter().all(|t| !t.is_zero()));
        assert!(spans.iter().all(|s| !s.is_zero()));
    }

    #[test]
    fn other_threads_get_other_sequences() {
        let here = TraceId::random();
        let there = std::thread::spawn(TraceId::random).join().unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn hex_round_trips() {
        let t = TraceId([0xab; 16]);
        assert_eq!(t.to_string(), "ab".repeat(16));
        assert_eq!(parse_hex::<16>(&t.to_hex()), Some(t.0));
        assert_eq!(
            parse_hex::<8>(b"00f067aa0ba902b7"),
            Some([0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(parse_hex::<8>(b"00f067aa0ba902bz"), None);
        assert_eq!(parse_hex::<8>(b"00f067aa0ba902b"), None);
        assert_eq!(parse_hex::<8>(b"00F067AA0BA902B7"), None);
        assert_eq!(
            SpanId([1, 2, 3, 4, 5, 6, 7, 8]).to_string(),
            "0102030405060708"
        );
    }
}
