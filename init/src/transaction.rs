//! Renders the single `iptables-restore --noflush` transaction that turns the nat
//! table's current Pillion slice into the wanted one. Pure and unit tested; install,
//! cleanup, rollback and the dry run all go through it.
//!
//! Inside one `*nat ... COMMIT` block, in this order:
//!
//! 1. declare every wanted chain (`:NAME - [0:0]` creates it, or flushes it if present);
//! 2. declare every chain that is going away too, which flushes it so it can be deleted;
//! 3. delete jumps that are no longer wanted (`-D`, by their exact saved spec);
//! 4. refill the wanted chains;
//! 5. append the wanted jumps that are missing, so a re-run never duplicates one;
//! 6. delete the chains that are going away (`-X`).
//!
//! Built-in chains are never declared, so their policies and other rules are untouched.

use std::collections::BTreeMap;

use crate::state::{Jump, NatSlice};

/// The restore input that moves `current` to `wanted`, or `None` when they already
/// match (nothing to do: the kernel is not touched at all).
pub fn render(current: &NatSlice, wanted: &NatSlice) -> Option<String> {
    if current.equivalent(wanted) {
        return None;
    }
    let leaving: Vec<&str> = current
        .chains
        .iter()
        .map(|chain| chain.name.as_str())
        .filter(|name| wanted.chain(name).is_none())
        .collect();

    let mut lines = vec!["*nat".to_owned()];
    for name in wanted
        .chains
        .iter()
        .map(|c| c.name.as_str())
        .chain(leaving.iter().copied())
    {
        lines.push(format!(":{name} - [0:0]"));
    }
    for jump in surplus(&current.jumps, &wanted.jumps) {
        lines.push(format!("-D {} {}", jump.chain, jump.spec));
    }
    for chain in &wanted.chains {
        for rule in &chain.rules {
            lines.push(format!("-A {} {rule}", chain.name));
        }
    }
    for jump in surplus(&wanted.jumps, &current.jumps) {
        lines.push(format!("-A {} {}", jump.chain, jump.spec));
    }
    for name in leaving {
        lines.push(format!("-X {name}"));
    }
    lines.push("COMMIT".to_owned());
    let mut text = lines.join("\n");
    text.push('\n');
    Some(text)
}

/// Jumps in `from` that `minus` does not account for, counting duplicates: two copies
/// of a jump where one is wanted leaves one to delete.
fn surplus<'a>(from: &'a [Jump], minus: &[Jump]) -> Vec<&'a Jump> {
    let mut budget: BTreeMap<&Jump, usize> = BTreeMap::new();
    for jump in minus {
        *budget.entry(jump).or_default() += 1;
    }
    from.iter()
        .filter(|jump| match budget.get_mut(jump) {
            Some(left) if *left > 0 => {
                *left -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Family, Plan};
    use crate::rules::desired;
    use crate::state::parse_save;

    fn wanted() -> NatSlice {
        let plan = Plan {
            families: vec![Family::V4],
            ..Plan::defaults()
        };
        desired(&plan, Family::V4)
    }

    /// Simulates what the kernel holds after a transaction ran against `before`.
    fn saved_after(text: &str) -> String {
        format!("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{text}")
    }

    #[test]
    fn fresh_install_declares_fills_and_hooks() {
        let text = render(&NatSlice::default(), &wanted()).unwrap();
        let expected = "\
*nat
:PILLION_INBOUND - [0:0]
:PILLION_REDIRECT_IN - [0:0]
:PILLION_OUTPUT - [0:0]
:PILLION_REDIRECT_OUT - [0:0]
-A PILLION_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A PILLION_INBOUND -p tcp -j PILLION_REDIRECT_IN
-A PILLION_REDIRECT_IN -p tcp -j REDIRECT --to-ports 15006
-A PILLION_OUTPUT -m owner --uid-owner 2580 -j RETURN
-A PILLION_OUTPUT -o lo -j RETURN
-A PILLION_OUTPUT -p tcp -j PILLION_REDIRECT_OUT
-A PILLION_REDIRECT_OUT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j PILLION_INBOUND
-A OUTPUT -p tcp -j PILLION_OUTPUT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn rerun_with_same_plan_is_a_no_op() {
        let wanted = wanted();
        assert_eq!(render(&wanted, &wanted), None);
        // And the same holds for what iptables-save prints after the install.
        let installed = render(&NatSlice::default(), &wanted).unwrap();
        let read_back = parse_save(&saved_after(&installed));
        assert!(read_back.equivalent(&wanted));
        assert_eq!(render(&read_back, &wanted), None);
    }

    #[test]
    fn changed_plan_refills_chains_but_keeps_existing_jumps() {
        let mut current = wanted();
        current.chains[0]
            .rules
            .insert(0, "-p tcp -m tcp --dport 22 -j RETURN".into());
        let text = render(&current, &wanted()).unwrap();
        assert!(text.contains(":PILLION_INBOUND - [0:0]\n"));
        assert!(!text.contains("--dport 22"));
        assert!(!text.contains("-A PREROUTING"));
        assert!(!text.contains("-A OUTPUT"));
        assert!(!text.contains("-D "));
        assert_eq!(text.matches("-j REDIRECT").count(), 2);
    }

    #[test]
    fn duplicate_and_stale_jumps_are_removed_once_each() {
        let mut current = wanted();
        current.jumps.push(current.jumps[1].clone());
        current.jumps.push(Jump {
            chain: "OUTPUT".into(),
            spec: "-d 198.18.0.0/15 -j PILLION_OUTPUT".into(),
        });
        let text = render(&current, &wanted()).unwrap();
        assert_eq!(
            text.matches("-D OUTPUT -p tcp -j PILLION_OUTPUT\n").count(),
            1
        );
        assert_eq!(
            text.matches("-D OUTPUT -d 198.18.0.0/15 -j PILLION_OUTPUT\n")
                .count(),
            1
        );
        assert!(!text.contains("-A OUTPUT"));
    }

    #[test]
    fn missing_jump_is_added_when_chains_exist() {
        let mut current = wanted();
        current.jumps.retain(|jump| jump.chain != "PREROUTING");
        let text = render(&current, &wanted()).unwrap();
        assert_eq!(
            text.matches("-A PREROUTING -p tcp -j PILLION_INBOUND\n")
                .count(),
            1
        );
        assert!(!text.contains("-A OUTPUT"));
    }

    #[test]
    fn cleanup_flushes_unhooks_and_deletes() {
        let text = render(&wanted(), &NatSlice::default()).unwrap();
        let expected = "\
*nat
:PILLION_INBOUND - [0:0]
:PILLION_REDIRECT_IN - [0:0]
:PILLION_OUTPUT - [0:0]
:PILLION_REDIRECT_OUT - [0:0]
-D PREROUTING -p tcp -j PILLION_INBOUND
-D OUTPUT -p tcp -j PILLION_OUTPUT
-X PILLION_INBOUND
-X PILLION_REDIRECT_IN
-X PILLION_OUTPUT
-X PILLION_REDIRECT_OUT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn cleanup_of_nothing_does_nothing() {
        assert_eq!(render(&NatSlice::default(), &NatSlice::default()), None);
    }

    #[test]
    fn cleanup_of_half_installed_state_removes_what_is_there() {
        let current = parse_save(
            "*nat\n:PILLION_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j PILLION_OUTPUT\n\
             -A PILLION_OUTPUT -j RETURN\nCOMMIT\n",
        );
        let text = render(&current, &NatSlice::default()).unwrap();
        assert_eq!(
            text,
            "*nat\n:PILLION_OUTPUT - [0:0]\n-D OUTPUT -p tcp -j PILLION_OUTPUT\n\
             -X PILLION_OUTPUT\nCOMMIT\n"
        );
    }

    #[test]
    fn rollback_restores_a_saved_snapshot() {
        let snapshot = parse_save(
            "*nat\n:PILLION_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j PILLION_OUTPUT\n\
             -A PILLION_OUTPUT -p tcp -j REDIRECT --to-ports 9999\nCOMMIT\n",
        );
        let text = render(&wanted(), &snapshot).unwrap();
        assert!(text.contains("-A PILLION_OUTPUT -p tcp -j REDIRECT --to-ports 9999\n"));
        assert!(text.contains("-D PREROUTING -p tcp -j PILLION_INBOUND\n"));
        assert!(!text.contains("-D OUTPUT"));
        assert!(text.contains("-X PILLION_INBOUND\n"));
        assert!(!text.contains("-X PILLION_OUTPUT"));
    }
}
