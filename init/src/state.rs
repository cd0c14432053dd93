//! Pillion's slice of a nat table: the chains it owns and the rules elsewhere that jump
//! into them. Built from the plan (what we want) or parsed from `iptables-save` output
//! (what the kernel holds), so the two can be compared and reconciled.

use crate::rules::is_owned_chain;

/// One of Pillion's chains and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The chain name, always one of [`crate::rules::OWNED_CHAINS`].
    pub name: String,
    /// Rule specs as `iptables-save` prints them, without the leading `-A <chain>`.
    pub rules: Vec<String>,
}

/// A rule in a chain Pillion does not own (PREROUTING, OUTPUT) that jumps into one it does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Jump {
    /// The chain the rule lives in.
    pub chain: String,
    /// The rule spec as `iptables-save` prints it, without the leading `-A <chain>`.
    pub spec: String,
}

/// Everything in one family's nat table that belongs to Pillion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSlice {
    /// Pillion's chains.
    pub chains: Vec<Chain>,
    /// The rules that lead into them.
    pub jumps: Vec<Jump>,
}

impl NatSlice {
    /// True when nothing of Pillion's is present.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }

    /// The chain called `name`, if present.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|chain| chain.name == name)
    }

    /// Same chains with the same rules and the same jumps, ignoring the order in which
    /// chains and jumps are listed (rule order inside a chain does matter).
    pub fn equivalent(&self, other: &NatSlice) -> bool {
        let mut mine = self.chains.clone();
        let mut theirs = other.chains.clone();
        mine.sort_by(|a, b| a.name.cmp(&b.name));
        theirs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut my_jumps = self.jumps.clone();
        let mut their_jumps = other.jumps.clone();
        my_jumps.sort();
        their_jumps.sort();
        mine == theirs && my_jumps == their_jumps
    }
}

/// Reads Pillion's slice out of `iptables-save` output (any number of tables; only
/// `*nat` is looked at). Unknown lines are ignored, so a newer iptables cannot break it.
pub fn parse_save(text: &str) -> NatSlice {
    let mut slice = NatSlice::default();
    let mut in_nat = false;
    for line in text.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if line == "COMMIT" {
            in_nat = false;
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if is_owned_chain(name) && slice.chain(name).is_none() {
                slice.chains.push(Chain {
                    name: name.to_owned(),
                    rules: Vec::new(),
                });
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            let spec = spec.trim().to_owned();
            if is_owned_chain(chain) {
                owned_chain_mut(&mut slice, chain).rules.push(spec);
            } else if target(&spec).is_some_and(is_owned_chain) {
                slice.jumps.push(Jump {
                    chain: chain.to_owned(),
                    spec,
                });
            }
        }
    }
    slice
}

/// Number of rules (`-A` lines) in `iptables-save` output, over all tables; the
/// backend detection uses it to see which backend the namespace already uses.
pub fn count_rules(text: &str) -> usize {
    text.lines()
        .filter(|line| line.trim_start().starts_with("-A "))
        .count()
}

fn owned_chain_mut<'a>(slice: &'a mut NatSlice, name: &str) -> &'a mut Chain {
    let index = match slice.chains.iter().position(|chain| chain.name == name) {
        Some(index) => index,
        None => {
            slice.chains.push(Chain {
                name: name.to_owned(),
                rules: Vec::new(),
            });
            slice.chains.len() - 1
        }
    };
    &mut slice.chains[index]
}

/// The chain a rule spec jumps or goes to (`-j X`, `--jump X`, `-g X`, `--goto X`).
fn target(spec: &str) -> Option<&str> {
    let tokens = tokens(spec);
    tokens
        .windows(2)
        .rev()
        .find(|pair| matches!(pair[0], "-j" | "--jump" | "-g" | "--goto"))
        .map(|pair| pair[1])
}

/// Splits a rule spec on whitespace, keeping `"quoted strings"` (comments) whole so a
/// comment that mentions `-j` cannot be mistaken for the target.
fn tokens(spec: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut quoted = false;
    let mut escaped = false;
    for (index, ch) in spec.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match ch {
            '\\' if quoted => escaped = true,
            '"' => {
                quoted = !quoted;
                start.get_or_insert(index);
            }
            c if c.is_whitespace() && !quoted => {
                if let Some(begin) = start.take() {
                    out.push(&spec[begin..index]);
                }
            }
            _ => {
                start.get_or_insert(index);
            }
        }
    }
    if let Some(begin) = start {
        out.push(&spec[begin..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Thu Nov 26 04:33:34 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j PILLION_OUTPUT
COMMIT
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [0:0]
:FOREIGN - [0:0]
:PILLION_INBOUND - [0:0]
:PILLION_REDIRECT_IN - [0:0]
-A PREROUTING -p tcp -j PILLION_INBOUND
-A OUTPUT -d 198.18.5.5/32 -p tcp -j RETURN
-A OUTPUT -m comment --comment \"not -j PILLION_INBOUND\" -j FOREIGN
-A PILLION_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A PILLION_INBOUND -p tcp -j PILLION_REDIRECT_IN
-A PILLION_REDIRECT_IN -p tcp -j REDIRECT --to-ports 15006
COMMIT
# Completed on Thu Nov 26 04:33:34 2026
";

    #[test]
    fn parses_only_pillions_nat_slice() {
        let slice = parse_save(SAVED);
        let names: Vec<_> = slice.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["PILLION_INBOUND", "PILLION_REDIRECT_IN"]);
        assert_eq!(
            slice.chain("PILLION_INBOUND").map(|c| c.rules.clone()),
            Some(vec![
                "-p tcp -m tcp --dport 15020 -j RETURN".to_owned(),
                "-p tcp -j PILLION_REDIRECT_IN".to_owned(),
            ])
        );
        assert_eq!(
            slice.jumps,
            [Jump {
                chain: "PREROUTING".into(),
                spec: "-p tcp -j PILLION_INBOUND".into()
            }]
        );
    }

    #[test]
    fn foreign_tables_and_comments_are_ignored() {
        // The filter table's jump and the comment that merely mentions our chain are
        // someone else's; neither may be picked up.
        let slice = parse_save(SAVED);
        assert!(slice.jumps.iter().all(|jump| jump.chain == "PREROUTING"));
    }

    #[test]
    fn empty_table_gives_empty_slice() {
        let slice = parse_save("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert!(slice.is_empty());
        assert!(parse_save("").is_empty());
    }

    #[test]
    fn goto_counts_as_a_jump() {
        let slice = parse_save("*nat\n-A OUTPUT -p tcp -g PILLION_OUTPUT\nCOMMIT\n");
        assert_eq!(slice.jumps.len(), 1);
    }

    #[test]
    fn counts_rules_in_all_tables() {
        assert_eq!(count_rules(SAVED), 7);
        assert_eq!(count_rules(""), 0);
    }

    #[test]
    fn equivalence_ignores_listing_order_but_not_rule_order() {
        let a = parse_save(SAVED);
        let mut b = a.clone();
        b.chains.reverse();
        assert!(a.equivalent(&b));
        let mut c = a.clone();
        c.chains[0].rules.reverse();
        assert!(!a.equivalent(&c));
    }

    #[test]
    fn tokens_keep_quoted_strings_whole() {
        assert_eq!(
            tokens(r#"-m comment --comment "a \"b\" -j X" -j Y"#),
            ["-m", "comment", "--comment", r#""a \"b\" -j X""#, "-j", "Y"]
        );
        assert_eq!(target("-p tcp -j PILLION_OUTPUT"), Some("PILLION_OUTPUT"));
        assert_eq!(target("-p tcp"), None);
    }
}
