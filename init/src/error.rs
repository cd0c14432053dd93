//! Every way `pillion-init` can fail, each with a message that says what to fix and an
//! exit code a caller (a test, a pod's status) can tell apart.

use std::fmt;

use crate::plan::Family;

/// Exit code for a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit code for a failure while talking to iptables (a rule the kernel refused, ...).
pub const EXIT_FAILED: u8 = 1;
/// Exit code for invalid flags or environment variables (clap uses it too).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when no iptables binary can be found in `PATH`.
pub const EXIT_NO_IPTABLES: u8 = 3;
/// Exit code when the kernel refuses because `CAP_NET_ADMIN` is missing.
pub const EXIT_NO_NET_ADMIN: u8 = 4;

/// The list of problems found while validating the configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One line per problem, each saying what to change.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration, nothing was changed:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Why a run of `pillion-init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Flags or environment variables were invalid; nothing was touched.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// None of the iptables binaries the backend needs is installed.
    #[error(
        "iptables is missing: none of {tried} was found in PATH ({path}); install the iptables \
         package (nft or legacy) in the init image or fix PATH"
    )]
    ToolMissing {
        /// The binary names that were looked for.
        tried: String,
        /// The PATH that was searched.
        path: String,
    },

    /// The process lacks CAP_NET_ADMIN, or the kernel refused to read or change the nat
    /// table for lack of it.
    #[error(
        "pillion-init needs CAP_NET_ADMIN in the pod's network namespace (add NET_ADMIN to \
         the init container's capabilities): {detail}"
    )]
    NeedsNetAdmin {
        /// What showed it was missing.
        detail: String,
    },

    /// Another process held the xtables lock for longer than we wait.
    #[error("`{tool}` could not take the xtables lock, another iptables user holds it: {detail}")]
    LockBusy {
        /// The binary that waited.
        tool: String,
        /// What it printed.
        detail: String,
    },

    /// An iptables binary ran and failed for another reason.
    #[error("`{tool}` failed ({status}): {detail}")]
    ToolFailed {
        /// The command line that failed.
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        detail: String,
    },

    /// An iptables binary was found but could not be started.
    #[error("could not run `{tool}`: {source}")]
    Spawn {
        /// The binary.
        tool: String,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },

    /// Auto-detection found neither a working nft nor a working legacy iptables.
    #[error("no usable iptables backend: nft: {nft}; legacy: {legacy}; force one with --backend")]
    NoBackend {
        /// Why nft was rejected.
        nft: String,
        /// Why legacy was rejected.
        legacy: String,
    },

    /// The IPv6 nat table could not be read, typically because the pod has no IPv6.
    #[error("the IPv6 nat table is not usable ({source}); pass --no-ipv6 if the pod has no IPv6")]
    Ipv6Unavailable {
        /// The underlying failure.
        #[source]
        source: Box<InitError>,
    },

    /// One family failed after an earlier family had already been changed.
    #[error("applying the {family} rules failed: {source}; {rollback}")]
    Partial {
        /// The family whose transaction failed.
        family: Family,
        /// Why it failed.
        #[source]
        source: Box<InitError>,
        /// What happened to the families changed before it.
        rollback: String,
    },

    /// Writing `--dry-run` output to stdout failed.
    #[error("could not write the dry-run output: {0}")]
    Output(#[source] std::io::Error),
}

impl InitError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Config(_) => EXIT_CONFIG,
            InitError::ToolMissing { .. } => EXIT_NO_IPTABLES,
            InitError::NeedsNetAdmin { .. } => EXIT_NO_NET_ADMIN,
            InitError::Ipv6Unavailable { source } | InitError::Partial { source, .. } => {
                source.exit_code()
            }
            InitError::LockBusy { .. }
            | InitError::ToolFailed { .. }
            | InitError::Spawn { .. }
            | InitError::NoBackend { .. }
            | InitError::Output(_) => EXIT_FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_lists_every_problem() {
        let err = ConfigError {
            problems: vec!["first".into(), "second".into()],
        };
        let text = err.to_string();
        assert!(text.contains("nothing was changed"));
        assert!(text.contains("\n  - first\n  - second"));
    }

    #[test]
    fn exit_codes_follow_the_root_cause() {
        let net_admin = InitError::NeedsNetAdmin {
            detail: "Permission denied".into(),
        };
        assert_eq!(net_admin.exit_code(), EXIT_NO_NET_ADMIN);
        let wrapped = InitError::Partial {
            family: Family::V6,
            source: Box::new(net_admin),
            rollback: "IPv4 rolled back".into(),
        };
        assert_eq!(wrapped.exit_code(), EXIT_NO_NET_ADMIN);
        let missing = InitError::ToolMissing {
            tried: "iptables-nft-restore".into(),
            path: String::new(),
        };
        assert_eq!(missing.exit_code(), EXIT_NO_IPTABLES);
        assert!(missing.to_string().contains("iptables is missing"));
    }
}
