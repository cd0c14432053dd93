//! The answers of the newest catalog version, each encoded once: every stream that
//! resolves the same destination at that version sends the same line, so a change
//! costs one encoding per distinct answer, not one per stream.

use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Destinations whose answers are kept per version: beyond it (a proxy asking
/// about every address it can think of) answers are encoded for each stream.
const MAX_KEPT: usize = 10_000;

/// Encoded answers of one version, by destination.
#[derive(Debug, Default)]
pub struct Answers {
    newest: Mutex<(u64, HashMap<SocketAddr, Bytes>)>,
}

impl Answers {
    /// The line answering `address` at `version`: the one already encoded, or the
    /// one `encode` makes (kept if `version` is the newest seen).
    pub fn line<E>(
        &self,
        version: u64,
        address: SocketAddr,
        encode: impl FnOnce() -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        {
            let newest = self.lock();
            if newest.0 == version {
                if let Some(line) = newest.1.get(&address) {
                    return Ok(line.clone());
                }
            }
        }
        let line = encode()?;
        let mut newest = self.lock();
        if newest.0 < version {
            *newest = (version, HashMap::new());
        }
        if newest.0 == version && newest.1.len() < MAX_KEPT {
            newest.1.insert(address, line.clone());
        }
        Ok(line)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<SocketAddr, Bytes>)> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_encoding_per_answer_and_version() {
        let answers = Answers::default();
        let addr: SocketAddr = "198.18.0.1:80".parse().unwrap();
        let other: SocketAddr = "198.18.0.2:80".parse().unwrap();
        let mut encoded = 0;
        let mut line = |version: u64, at: SocketAddr, text: &'static str| {
            answers
                .line(version, at, || {
                    encoded += 1;
                    Ok::<_, ()>(Bytes::from_static(text.as_bytes()))
                })
                .unwrap()
        };
        assert_eq!(line(1, addr, "a1"), "a1");
        assert_eq!(line(1, addr, "not encoded"), "a1");
        assert_eq!(line(1, other, "b1"), "b1");
        assert_eq!(line(2, addr, "a2"), "a2");
        // A stream behind the newest version encodes its own, and keeps nothing.
        assert_eq!(line(1, addr, "a1 again"), "a1 again");
        assert_eq!(line(2, addr, "not encoded"), "a2");
        assert_eq!(encoded, 4);
    }
}
