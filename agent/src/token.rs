//! Bearer tokens are looked up and logged only by their SHA-256, so the agent never
//! keeps a token in a log line and lookups don't compare secrets byte by byte.

use std::fmt;

/// The SHA-256 of a bearer token: the key the agent looks workloads up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token as it arrived (from the source file or an `Authorization` header).
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// The first 8 hex digits of the hash: enough to tell tokens apart in logs,
    /// useless for guessing the token.
    pub fn short(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.short())
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_tokens_hash_equal_and_short_form_hides_token() {
        let a = TokenHash::of("demo-client-token");
        assert_eq!(a, TokenHash::of("demo-client-token"));
        assert_ne!(a, TokenHash::of("demo-server-token"));
        assert_eq!(a.short().len(), 8);
        assert!(!format!("{a:?}").contains("demo"));
    }
}
