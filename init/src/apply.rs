//! Carries a plan out against the kernel: read each family's nat table, render one
//! transaction per family, check every transaction with `iptables-restore --test`, then
//! commit them one family at a time, rolling the earlier families back if a later one
//! fails. Also renders the `--dry-run` preview, which touches nothing.

use crate::backend::{self, Backend, BackendChoice, Tools};
use crate::caps;
use crate::error::InitError;
use crate::plan::{Family, Mode, Plan};
use crate::rules;
use crate::state::{self, NatSlice};
use crate::transaction;

/// What a run did to one family of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The iptables flavour that was programmed.
    pub backend: Backend,
    /// The family.
    pub family: Family,
    /// False when the table already matched and was not touched.
    pub changed: bool,
}

/// Installs (or refreshes) the plan's rules in every family it covers.
pub fn install(plan: &Plan, choice: BackendChoice) -> Result<Vec<Change>, InitError> {
    ensure_net_admin()?;
    let backend = backend::choose(choice, &plan.families)?;
    let targets = plan
        .families
        .iter()
        .map(|&family| Target::read(backend, family, rules::desired(plan, family)))
        .collect::<Result<Vec<_>, _>>()?;
    commit(&targets, "installed")
}

/// Removes Pillion's chains and the jumps into them, and nothing else. With
/// `--backend auto` every flavour that holds them is cleaned.
pub fn cleanup(plan: &Plan, choice: BackendChoice) -> Result<Vec<Change>, InitError> {
    ensure_net_admin()?;
    let backends = match choice {
        BackendChoice::Nft => vec![Backend::Nft],
        BackendChoice::Legacy => vec![Backend::Legacy],
        BackendChoice::Auto => backend::holding_ours(&plan.families)?,
    };
    let mut targets = Vec::new();
    for backend in backends {
        for &family in &plan.families {
            targets.push(Target::read(backend, family, NatSlice::default())?);
        }
    }
    if targets.iter().all(|target| target.transaction.is_none()) {
        tracing::info!("no Pillion rules are installed; nothing to clean up");
    }
    commit(&targets, "removed")
}

/// The `--dry-run` output: for each family, the exact transaction a run would feed to
/// `iptables-restore --noflush` on a namespace that has no Pillion rules yet (install),
/// or that holds a complete install of this plan (cleanup).
pub fn preview(plan: &Plan, mode: Mode) -> String {
    let mut out = String::new();
    for &family in &plan.families {
        let wanted = rules::desired(plan, family);
        let (from, to, what) = match mode {
            Mode::Install => (NatSlice::default(), wanted, "install"),
            Mode::Cleanup => (wanted, NatSlice::default(), "cleanup"),
        };
        out.push_str(&format!(
            "# pillion-init --dry-run ({what}): {family} nat rules for `{}-restore --noflush`\n",
            family.tool_prefix()
        ));
        out.push_str(&transaction::render(&from, &to).unwrap_or_default());
    }
    out
}

/// One family of one backend: what it held, what it should hold, and the transaction
/// between the two.
struct Target {
    tools: Tools,
    before: NatSlice,
    transaction: Option<String>,
}

impl Target {
    fn read(backend: Backend, family: Family, wanted: NatSlice) -> Result<Target, InitError> {
        let tools = Tools::resolve(backend, family).map_err(|error| explain(family, error))?;
        let saved = tools.save_nat().map_err(|error| explain(family, error))?;
        let before = state::parse_save(&saved);
        let transaction = transaction::render(&before, &wanted);
        Ok(Target {
            tools,
            before,
            transaction,
        })
    }
}

/// Validates, then applies, each target's transaction; `verb` says what applying means
/// in the logs.
fn commit(targets: &[Target], verb: &str) -> Result<Vec<Change>, InitError> {
    // Validate everything first, so a rule one family rejects fails before any change.
    for target in targets {
        if let Some(text) = &target.transaction {
            target.tools.restore(text, true)?;
        }
    }
    let mut changes = Vec::new();
    for (index, target) in targets.iter().enumerate() {
        let (backend, family) = (target.tools.backend, target.tools.family);
        let Some(text) = &target.transaction else {
            tracing::info!(%backend, %family, "nothing to change; left untouched");
            changes.push(Change {
                backend,
                family,
                changed: false,
            });
            continue;
        };
        if let Err(error) = target.tools.restore(text, false) {
            let done: Vec<&Target> = targets[..index]
                .iter()
                .filter(|earlier| earlier.transaction.is_some())
                .collect();
            if done.is_empty() {
                return Err(error);
            }
            return Err(InitError::Partial {
                family,
                source: Box::new(error),
                rollback: roll_back(&done),
            });
        }
        tracing::info!(%backend, %family, "Pillion nat rules {verb}");
        tracing::debug!(%backend, %family, transaction = %text, "transaction");
        changes.push(Change {
            backend,
            family,
            changed: true,
        });
    }
    Ok(changes)
}

/// Puts each already-changed family back the way it was found, newest first.
fn roll_back(done: &[&Target]) -> String {
    let mut notes = Vec::new();
    for target in done.iter().rev() {
        let (backend, family) = (target.tools.backend, target.tools.family);
        let result = target.tools.save_nat().and_then(|now| {
            match transaction::render(&state::parse_save(&now), &target.before) {
                Some(text) => target.tools.restore(&text, false),
                None => Ok(()),
            }
        });
        notes.push(match result {
            Ok(()) => {
                tracing::warn!(%backend, %family, "rolled back");
                format!("the {family} ({backend}) rules were rolled back to how they were")
            }
            Err(error) => {
                tracing::error!(%backend, %family, %error, "rollback failed");
                format!(
                    "rolling back the {family} ({backend}) rules failed too ({error}); inspect \
                     them with `{}-save -t nat`",
                    family.tool_prefix()
                )
            }
        });
    }
    notes.join("; ")
}

/// Attaches the `--no-ipv6` hint to failures reading the IPv6 table.
fn explain(family: Family, error: InitError) -> InitError {
    match (family, error) {
        (Family::V6, error @ (InitError::ToolMissing { .. } | InitError::ToolFailed { .. })) => {
            InitError::Ipv6Unavailable {
                source: Box::new(error),
            }
        }
        (_, error) => error,
    }
}

fn ensure_net_admin() -> Result<(), InitError> {
    match caps::has_net_admin() {
        Some(false) => Err(InitError::NeedsNetAdmin {
            detail: "it is not in this process's effective capability set".to_owned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            skip_outbound_ports: vec![5432],
            skip_outbound_cidrs: vec![
                "198.18.0.0/15".parse().unwrap(),
                "2001:2::/48".parse().unwrap(),
            ],
            ..Plan::defaults()
        }
    }

    #[test]
    fn preview_shows_both_families_with_their_own_cidrs() {
        let text = preview(&plan(), Mode::Install);
        let (v4, v6) = text
            .split_once("# pillion-init --dry-run (install): IPv6")
            .unwrap();
        assert!(v4.contains("IPv4 nat rules for `iptables-restore --noflush`"));
        assert!(v4.contains("-A PILLION_OUTPUT -d 198.18.0.0/15 -j RETURN"));
        assert!(!v4.contains("2001:2::"));
        assert!(v6.contains("`ip6tables-restore --noflush`"));
        assert!(v6.contains("-A PILLION_OUTPUT -d 2001:2::/48 -j RETURN"));
        assert!(!v6.contains("198.18."));
        assert_eq!(text.matches("COMMIT").count(), 2);
        assert_eq!(
            text.matches("-A OUTPUT -p tcp -j PILLION_OUTPUT").count(),
            2
        );
    }

    #[test]
    fn cleanup_preview_removes_everything() {
        let text = preview(&plan(), Mode::Cleanup);
        assert_eq!(text.matches("-X PILLION_").count(), 8);
        assert_eq!(
            text.matches("-D PREROUTING -p tcp -j PILLION_INBOUND")
                .count(),
            2
        );
        assert!(!text.contains("-A "));
    }

    #[test]
    fn preview_is_replayable_restore_input() {
        // Comment lines are the only additions, and iptables-restore skips them.
        let text = preview(&plan(), Mode::Install);
        for line in text.lines() {
            assert!(
                line.starts_with('#')
                    || line.starts_with('*')
                    || line.starts_with(':')
                    || line.starts_with("-A ")
                    || line == "COMMIT",
                "{line}"
            );
        }
    }

    #[test]
    fn ipv6_read_failures_suggest_no_ipv6() {
        let failed = || InitError::ToolFailed {
            tool: "ip6tables-nft-save -t nat".into(),
            status: "exit status 1".into(),
            detail: "Table does not exist".into(),
        };
        let text = explain(Family::V6, failed()).to_string();
        assert!(text.contains("--no-ipv6"), "{text}");
        let text = explain(Family::V4, failed()).to_string();
        assert!(!text.contains("--no-ipv6"), "{text}");
        let denied = InitError::NeedsNetAdmin { detail: "y".into() };
        assert!(matches!(
            explain(Family::V6, denied),
            InitError::NeedsNetAdmin { .. }
        ));
    }
}
