//! Raises the open-files soft limit to the hard limit at start: every proxied
//! connection costs two descriptors, and container runtimes often leave the
//! soft limit at 1024.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The open-files limit before and after raising it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NofileLimit {
    /// Soft limit found at start.
    pub before: u64,
    /// Soft limit in force now.
    pub after: u64,
}

/// The open-files soft limit in force (`None` when it cannot be read).
pub(crate) fn nofile() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Sets the soft `RLIMIT_NOFILE` to the hard limit; never lowers it.
pub(crate) fn raise_nofile() -> Result<NofileLimit, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(NofileLimit {
            before: soft,
            after: soft,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(NofileLimit {
        before: soft,
        after: hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit_and_is_idempotent() {
        let first = raise_nofile().unwrap();
        assert!(first.after >= first.before);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        let again = raise_nofile().unwrap();
        assert_eq!(again.before, again.after);
        assert_eq!(nofile(), Some(soft));
    }
}
