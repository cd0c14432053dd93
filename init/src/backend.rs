//! Which iptables binaries to drive: the nft-based or the legacy (x_tables) flavour,
//! found in `PATH`, and how to choose between them when told `--backend auto`.
//!
//! Rules installed through one flavour are invisible to the other, so the choice has
//! to match what the rest of the pod (and the node's tooling) uses. Auto-detection asks
//! both flavours for their rules: the one that already holds Pillion's chains wins,
//! else the one holding more rules, else nft when it works at all, else legacy.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::error::InitError;
use crate::plan::Family;
use crate::runner;
use crate::state;

/// Seconds `iptables-restore` waits for the xtables lock before giving up.
const LOCK_WAIT_SECS: &str = "5";

/// The backend asked for on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// Detect which backend the namespace already uses.
    #[default]
    Auto,
    /// Force `iptables-nft`.
    Nft,
    /// Force `iptables-legacy`.
    Legacy,
}

/// A concrete iptables flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nf_tables through the iptables-nft compatibility layer.
    Nft,
    /// The legacy x_tables kernel interface.
    Legacy,
}

impl Backend {
    /// Both flavours, in order of preference.
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    /// The suffix of this flavour's binaries (`iptables-nft-save`).
    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// Whether `iptables-save --version` output describes this flavour; iptables before
    /// 1.8 prints no flavour and is legacy.
    fn matches_version(self, version: &str) -> bool {
        let nft = version.contains("nf_tables");
        match self {
            Backend::Nft => nft,
            Backend::Legacy => !nft,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// The save/restore pair of one flavour for one family, resolved to absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// The flavour.
    pub backend: Backend,
    /// The family these binaries program.
    pub family: Family,
    /// `iptables-save` or its equivalent.
    pub save: PathBuf,
    /// `iptables-restore` or its equivalent.
    pub restore: PathBuf,
}

impl Tools {
    /// Finds the binaries in `PATH`: `iptables-<flavour>-save`/`-restore` first, else the
    /// plain `iptables-save`/`-restore` when `--version` says they are that flavour.
    pub fn resolve(backend: Backend, family: Family) -> Result<Tools, InitError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let prefix = family.tool_prefix();
        let suffix = backend.suffix();
        let flavoured = (
            find_in_path(&format!("{prefix}-{suffix}-save"), &path),
            find_in_path(&format!("{prefix}-{suffix}-restore"), &path),
        );
        if let (Some(save), Some(restore)) = flavoured {
            return Ok(Tools {
                backend,
                family,
                save,
                restore,
            });
        }
        let plain = (
            find_in_path(&format!("{prefix}-save"), &path),
            find_in_path(&format!("{prefix}-restore"), &path),
        );
        if let (Some(save), Some(restore)) = plain {
            let version = runner::run(&save, &["--version"], None).unwrap_or_default();
            if backend.matches_version(&version) {
                return Ok(Tools {
                    backend,
                    family,
                    save,
                    restore,
                });
            }
        }
        Err(InitError::ToolMissing {
            tried: format!(
                "{prefix}-{suffix}-save/-restore, {prefix}-save/-restore ({backend} flavour)"
            ),
            path: path.to_string_lossy().into_owned(),
        })
    }

    /// The nat table as `iptables-save -t nat` prints it.
    pub fn save_nat(&self) -> Result<String, InitError> {
        runner::run(&self.save, &["-t", "nat"], None)
    }

    /// Every table, as plain `iptables-save` prints it. Unlike `-t nat` this never
    /// makes the legacy kernel instantiate a table, so detection changes nothing.
    pub fn save_all(&self) -> Result<String, InitError> {
        runner::run(&self.save, &[], None)
    }

    /// Feeds one transaction to `iptables-restore --noflush`; with `check_only` it is
    /// parsed and validated (`--test`) but not committed.
    pub fn restore(&self, transaction: &str, check_only: bool) -> Result<(), InitError> {
        let mut args = vec!["-w", LOCK_WAIT_SECS, "--noflush"];
        if check_only {
            args.push("--test");
        }
        runner::run(&self.restore, &args, Some(transaction)).map(drop)
    }
}

/// What asking one flavour for its rules found.
#[derive(Debug)]
pub enum Probe {
    /// Its binaries are not installed.
    Missing,
    /// Installed, but listing the rules failed (e.g. no nf_tables in the kernel).
    Broken(String),
    /// It answered.
    Works {
        /// Rules it holds, over all tables and families.
        rules: usize,
        /// Whether Pillion's chains are among them.
        ours: bool,
    },
}

/// Asks `backend` for its rules in every family that has binaries; a refusal for lack of
/// CAP_NET_ADMIN is an error, not a reason to fall back to the other flavour.
pub fn probe(backend: Backend, families: &[Family]) -> Result<Probe, InitError> {
    let mut rules = 0;
    let mut ours = false;
    for &family in families {
        let tools = match Tools::resolve(backend, family) {
            Ok(tools) => tools,
            Err(_) if family == Family::V4 => return Ok(Probe::Missing),
            Err(_) => continue,
        };
        match tools.save_all() {
            Ok(text) => {
                rules += state::count_rules(&text);
                ours |= !state::parse_save(&text).is_empty();
            }
            Err(error @ InitError::NeedsNetAdmin { .. }) => return Err(error),
            Err(error) if family == Family::V4 => return Ok(Probe::Broken(error.to_string())),
            Err(error) => {
                tracing::debug!(%backend, %family, %error, "listing rules failed");
            }
        }
    }
    Ok(Probe::Works { rules, ours })
}

/// Picks the flavour to install with from what both flavours reported.
pub fn decide(nft: Probe, legacy: Probe) -> Result<Backend, InitError> {
    match (nft, legacy) {
        (
            Probe::Works {
                rules: nft_rules,
                ours: nft_ours,
            },
            Probe::Works {
                rules: legacy_rules,
                ours: legacy_ours,
            },
        ) => Ok(if nft_ours != legacy_ours {
            if nft_ours {
                Backend::Nft
            } else {
                Backend::Legacy
            }
        } else if legacy_rules > nft_rules {
            Backend::Legacy
        } else {
            Backend::Nft
        }),
        (Probe::Works { .. }, _) => Ok(Backend::Nft),
        (_, Probe::Works { .. }) => Ok(Backend::Legacy),
        (Probe::Missing, Probe::Missing) => Err(InitError::ToolMissing {
            tried: "iptables-nft-save, iptables-legacy-save, iptables-save".to_owned(),
            path: std::env::var_os("PATH")
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        }),
        (nft, legacy) => Err(InitError::NoBackend {
            nft: describe(&nft),
            legacy: describe(&legacy),
        }),
    }
}

/// Resolves `--backend` to the flavour an install should use.
pub fn choose(choice: BackendChoice, families: &[Family]) -> Result<Backend, InitError> {
    let backend = match choice {
        BackendChoice::Nft => Backend::Nft,
        BackendChoice::Legacy => Backend::Legacy,
        BackendChoice::Auto => {
            let nft = probe(Backend::Nft, families)?;
            let legacy = probe(Backend::Legacy, families)?;
            tracing::debug!(?nft, ?legacy, "probed iptables backends");
            decide(nft, legacy)?
        }
    };
    tracing::info!(%backend, ?choice, "iptables backend");
    Ok(backend)
}

/// The flavours that hold Pillion's chains, for `--cleanup --backend auto`.
pub fn holding_ours(families: &[Family]) -> Result<Vec<Backend>, InitError> {
    let mut found = Vec::new();
    let mut probes = Vec::new();
    for backend in Backend::ALL {
        let probe = probe(backend, families)?;
        if let Probe::Works { ours: true, .. } = probe {
            found.push(backend);
        }
        probes.push(probe);
    }
    if probes.iter().all(|probe| matches!(probe, Probe::Missing)) {
        // Neither flavour exists: say so rather than claim there was nothing to remove.
        let mut probes = probes.into_iter();
        let nft = probes.next().unwrap_or(Probe::Missing);
        let legacy = probes.next().unwrap_or(Probe::Missing);
        decide(nft, legacy)?;
    }
    Ok(found)
}

fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Missing => "not installed".to_owned(),
        Probe::Broken(reason) => reason.clone(),
        Probe::Works { .. } => "works".to_owned(),
    }
}

/// Looks `name` up in the directories of `path` (a `PATH` value); only executable
/// regular files count.
pub fn find_in_path(name: &str, path: &OsString) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn works(rules: usize, ours: bool) -> Probe {
        Probe::Works { rules, ours }
    }

    #[test]
    fn prefers_the_flavour_holding_our_chains() {
        assert_eq!(
            decide(works(50, false), works(3, true)).unwrap(),
            Backend::Legacy
        );
        assert_eq!(
            decide(works(0, true), works(9, false)).unwrap(),
            Backend::Nft
        );
    }

    #[test]
    fn then_the_flavour_with_more_rules() {
        assert_eq!(
            decide(works(0, false), works(4, false)).unwrap(),
            Backend::Legacy
        );
        assert_eq!(
            decide(works(4, false), works(1, false)).unwrap(),
            Backend::Nft
        );
    }

    #[test]
    fn ties_and_empty_tables_go_to_nft() {
        assert_eq!(
            decide(works(0, false), works(0, false)).unwrap(),
            Backend::Nft
        );
        assert_eq!(
            decide(works(2, true), works(2, true)).unwrap(),
            Backend::Nft
        );
    }

    #[test]
    fn falls_back_to_whichever_works() {
        assert_eq!(
            decide(Probe::Broken("no nf_tables".into()), works(0, false)).unwrap(),
            Backend::Legacy
        );
        assert_eq!(
            decide(works(0, false), Probe::Missing).unwrap(),
            Backend::Nft
        );
    }

    #[test]
    fn nothing_installed_is_tool_missing() {
        let err = decide(Probe::Missing, Probe::Missing).unwrap_err();
        assert!(matches!(err, InitError::ToolMissing { .. }), "{err}");
    }

    #[test]
    fn nothing_working_explains_both() {
        let err = decide(Probe::Broken("nft broke".into()), Probe::Missing).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("nft broke") && text.contains("not installed"),
            "{text}"
        );
    }

    #[test]
    fn version_strings_identify_the_flavour() {
        assert!(Backend::Nft.matches_version("iptables-save v1.8.9 (nf_tables)"));
        assert!(!Backend::Legacy.matches_version("iptables-save v1.8.9 (nf_tables)"));
        assert!(Backend::Legacy.matches_version("iptables-save v1.8.9 (legacy)"));
        assert!(Backend::Legacy.matches_version("iptables-save v1.6.1"));
    }

    #[test]
    fn path_lookup_needs_an_executable_file() {
        let dir = std::env::temp_dir().join(format!("pillion-init-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("tool-x");
        let plain = dir.join("tool-y");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::write(&plain, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent-dir", dir.to_str().unwrap()]).unwrap();
        assert_eq!(find_in_path("tool-x", &path), Some(exe));
        assert_eq!(find_in_path("tool-y", &path), None);
        assert_eq!(find_in_path("tool-x", &OsString::new()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
