//! Entry point of pillion-init's fuzz target (`fuzz/fuzz_targets/`), not an API:
//! flags through the parser and validation into a plan, `iptables-save` output
//! through the reader, and the transaction between them. It panics only when an
//! invariant breaks; the replay test below runs every committed corpus file through
//! it on stable.

use crate::config::Args;
use crate::plan::Family;
use crate::rules::{desired, is_owned_chain};
use crate::state::{parse_save, Chain, Jump, NatSlice};
use crate::transaction::render;
use clap::Parser;

/// Input: flags, one argument per line, then a line `---`, then `iptables-save`
/// output (no `---`: all of it is `iptables-save` output, with default flags). The
/// transaction from what the text holds to what the flags want declares and deletes
/// only Pillion's chains, and run against that state it leaves exactly the wanted
/// slice; a second run has nothing to do.
pub fn init_rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (flags, saved) = match text.split_once("\n---\n") {
        Some((flags, saved)) => (flags.lines().collect::<Vec<_>>(), saved),
        None => (Vec::new(), text),
    };
    let args = std::iter::once("pillion-init").chain(flags);
    let settings = match Args::try_parse_from(args).map(Args::validate) {
        Ok(Ok(settings)) => settings,
        Ok(Err(e)) => {
            let _ = e.to_string();
            return;
        }
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let current = parse_save(saved);
    for family in [Family::V4, Family::V6] {
        let wanted = desired(&settings.plan, family);
        assert_eq!(render(&wanted, &wanted), None, "a re-run changes something");
        for target in [&wanted, &NatSlice::default()] {
            let Some(transaction) = render(&current, target) else {
                assert!(current.equivalent(target));
                continue;
            };
            let after = run(&current, &transaction);
            assert!(
                after.equivalent(target),
                "{transaction}\nleaves {after:?}\nnot {target:?}"
            );
        }
    }
}

/// What the nat table holds after `iptables-restore --noflush` ran `transaction`
/// against `before`, as far as Pillion's slice goes.
fn run(before: &NatSlice, transaction: &str) -> NatSlice {
    let mut after = before.clone();
    for line in transaction.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split(' ').next().unwrap_or_default();
            assert!(is_owned_chain(name), "declares (flushes) {name:?}: {line}");
            match after.chains.iter_mut().find(|c| c.name == name) {
                Some(chain) => chain.rules.clear(),
                None => after.chains.push(Chain {
                    name: name.to_owned(),
                    rules: Vec::new(),
                }),
            }
        } else if let Some(name) = line.strip_prefix("-X ") {
            assert!(is_owned_chain(name), "deletes {name:?}");
            after.chains.retain(|c| c.name != name);
        } else if let Some(rest) = line.strip_prefix("-D ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let at = after
                .jumps
                .iter()
                .position(|j| j.chain == chain && j.spec == spec);
            let at = at.unwrap_or_else(|| panic!("deletes a jump that is not there: {line}"));
            after.jumps.remove(at);
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            match after.chains.iter_mut().find(|c| c.name == chain) {
                Some(owned) => owned.rules.push(spec.to_owned()),
                None => after.jumps.push(Jump {
                    chain: chain.to_owned(),
                    spec: spec.to_owned(),
                }),
            }
        } else {
            assert!(
                matches!(line, "*nat" | "COMMIT"),
                "unexpected line {line:?}"
            );
        }
    }
    after
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/init_rules/`), so a crash
    //! the fuzzer once found stays fixed on stable `cargo test`.

    #[test]
    fn replay_init_rules() {
        pillion_api::fuzzing::replay_corpus("init_rules", super::init_rules);
    }
}
