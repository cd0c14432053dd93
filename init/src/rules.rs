//! The nat rules Pillion owns, rendered from a [`Plan`] for one address family. Pure:
//! no process is run here, so every rule is unit tested.
//!
//! Four chains of our own, reached by one jump each from the built-in chains:
//!
//! ```text
//! PREROUTING  -p tcp -> PILLION_INBOUND      OUTPUT -p tcp -> PILLION_OUTPUT
//!   skip-inbound ports       RETURN            proxy uid (and gid)      RETURN
//!   everything else -> PILLION_REDIRECT_IN     out via lo               RETURN
//!                        REDIRECT :inbound     skip-outbound cidrs      RETURN
//!                                              skip-outbound ports      RETURN
//!                                              everything else -> PILLION_REDIRECT_OUT
//!                                                                REDIRECT :outbound
//! ```
//!
//! The jumps are appended to PREROUTING and OUTPUT, so rules that were there first keep
//! their say. Rules are written in the exact form `iptables-save` prints them in, so a
//! table read back compares equal to the plan and a re-run with nothing new is a no-op.
//!
//! # Loopback
//!
//! Whatever the application sends out through `lo` is left alone (`-o lo -j RETURN`,
//! after the proxy's own traffic has already been let through). That covers the app
//! talking to itself on 127.0.0.1 / ::1, and it also covers the app reaching its *own
//! pod IP*: the kernel routes local addresses through `lo` too. Istio handles that last
//! case with an extra hairpin (the proxy's own traffic to the pod IP over `lo` is sent
//! back to the inbound listener) because its outbound proxy would otherwise wrap a call
//! to itself in mTLS that the plaintext app cannot answer. We keep it simple: a pod
//! calling itself never goes through its proxy, in either direction, so there is no
//! loop and nothing to special-case. Locally generated traffic never passes nat
//! PREROUTING, so the inbound side needs no loopback rule.

use crate::plan::{Family, Plan};
use crate::state::{Chain, Jump, NatSlice};

/// Inbound entry chain, jumped to from PREROUTING.
pub const INBOUND_CHAIN: &str = "PILLION_INBOUND";
/// Inbound redirect to the proxy's inbound port.
pub const REDIRECT_IN_CHAIN: &str = "PILLION_REDIRECT_IN";
/// Outbound entry chain, jumped to from OUTPUT.
pub const OUTPUT_CHAIN: &str = "PILLION_OUTPUT";
/// Outbound redirect to the proxy's outbound port.
pub const REDIRECT_OUT_CHAIN: &str = "PILLION_REDIRECT_OUT";
/// Every chain Pillion owns; cleanup removes exactly these and the jumps into them.
pub const OWNED_CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    REDIRECT_IN_CHAIN,
    OUTPUT_CHAIN,
    REDIRECT_OUT_CHAIN,
];

/// Whether `name` is one of Pillion's chains.
pub fn is_owned_chain(name: &str) -> bool {
    OWNED_CHAINS.contains(&name)
}

/// The complete slice of the nat table the plan asks for, in `family`.
pub fn desired(plan: &Plan, family: Family) -> NatSlice {
    let mut inbound: Vec<String> = plan
        .skip_inbound_ports
        .iter()
        .map(|port| format!("-p tcp -m tcp --dport {port} -j RETURN"))
        .collect();
    inbound.push(format!("-p tcp -j {REDIRECT_IN_CHAIN}"));

    let mut output = vec![format!("-m owner --uid-owner {} -j RETURN", plan.proxy_uid)];
    if let Some(gid) = plan.proxy_gid {
        output.push(format!("-m owner --gid-owner {gid} -j RETURN"));
    }
    output.push("-o lo -j RETURN".to_owned());
    output.extend(
        plan.cidrs_for(family)
            .map(|net| format!("-d {net} -j RETURN")),
    );
    output.extend(
        plan.skip_outbound_ports
            .iter()
            .map(|port| format!("-p tcp -m tcp --dport {port} -j RETURN")),
    );
    output.push(format!("-p tcp -j {REDIRECT_OUT_CHAIN}"));

    NatSlice {
        chains: vec![
            chain(INBOUND_CHAIN, inbound),
            chain(REDIRECT_IN_CHAIN, vec![redirect(plan.inbound_port)]),
            chain(OUTPUT_CHAIN, output),
            chain(REDIRECT_OUT_CHAIN, vec![redirect(plan.outbound_port)]),
        ],
        jumps: vec![
            Jump {
                chain: "PREROUTING".to_owned(),
                spec: format!("-p tcp -j {INBOUND_CHAIN}"),
            },
            Jump {
                chain: "OUTPUT".to_owned(),
                spec: format!("-p tcp -j {OUTPUT_CHAIN}"),
            },
        ],
    }
}

fn chain(name: &str, rules: Vec<String>) -> Chain {
    Chain {
        name: name.to_owned(),
        rules,
    }
}

fn redirect(port: u16) -> String {
    format!("-p tcp -j REDIRECT --to-ports {port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(slice: &NatSlice, name: &str) -> Vec<String> {
        slice
            .chain(name)
            .map(|c| c.rules.clone())
            .unwrap_or_default()
    }

    #[test]
    fn default_plan_redirects_both_directions() {
        let slice = desired(&Plan::defaults(), Family::V4);
        assert_eq!(
            rules_of(&slice, INBOUND_CHAIN),
            [
                "-p tcp -m tcp --dport 15020 -j RETURN",
                "-p tcp -j PILLION_REDIRECT_IN"
            ]
        );
        assert_eq!(
            rules_of(&slice, REDIRECT_IN_CHAIN),
            ["-p tcp -j REDIRECT --to-ports 15006"]
        );
        assert_eq!(
            rules_of(&slice, OUTPUT_CHAIN),
            [
                "-m owner --uid-owner 2580 -j RETURN",
                "-o lo -j RETURN",
                "-p tcp -j PILLION_REDIRECT_OUT"
            ]
        );
        assert_eq!(
            rules_of(&slice, REDIRECT_OUT_CHAIN),
            ["-p tcp -j REDIRECT --to-ports 15001"]
        );
        let jumps: Vec<_> = slice
            .jumps
            .iter()
            .map(|j| format!("{} {}", j.chain, j.spec))
            .collect();
        assert_eq!(
            jumps,
            [
                "PREROUTING -p tcp -j PILLION_INBOUND",
                "OUTPUT -p tcp -j PILLION_OUTPUT"
            ]
        );
    }

    #[test]
    fn every_skip_is_rendered_in_order_before_the_redirect() {
        let mut plan = Plan::defaults();
        plan.proxy_gid = Some(2581);
        plan.skip_inbound_ports = vec![15020, 22];
        plan.skip_outbound_ports = vec![5432, 443];
        plan.skip_outbound_cidrs = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:2::/48".parse().unwrap(),
            "198.18.0.9/32".parse().unwrap(),
        ];
        let slice = desired(&plan, Family::V4);
        assert_eq!(
            rules_of(&slice, INBOUND_CHAIN),
            [
                "-p tcp -m tcp --dport 15020 -j RETURN",
                "-p tcp -m tcp --dport 22 -j RETURN",
                "-p tcp -j PILLION_REDIRECT_IN"
            ]
        );
        assert_eq!(
            rules_of(&slice, OUTPUT_CHAIN),
            [
                "-m owner --uid-owner 2580 -j RETURN",
                "-m owner --gid-owner 2581 -j RETURN",
                "-o lo -j RETURN",
                "-d 10.0.0.0/8 -j RETURN",
                "-d 198.18.0.9/32 -j RETURN",
                "-p tcp -m tcp --dport 5432 -j RETURN",
                "-p tcp -m tcp --dport 443 -j RETURN",
                "-p tcp -j PILLION_REDIRECT_OUT"
            ]
        );
    }

    #[test]
    fn cidrs_go_to_their_own_family_only() {
        let mut plan = Plan::defaults();
        plan.skip_outbound_cidrs = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:2::/48".parse().unwrap(),
        ];
        let v4 = rules_of(&desired(&plan, Family::V4), OUTPUT_CHAIN).join("\n");
        let v6 = rules_of(&desired(&plan, Family::V6), OUTPUT_CHAIN).join("\n");
        assert!(v4.contains("-d 10.0.0.0/8 -j RETURN"));
        assert!(!v4.contains("2001:2::"));
        assert!(v6.contains("-d 2001:2::/48 -j RETURN"));
        assert!(!v6.contains("10.0.0.0"));
    }

    #[test]
    fn families_differ_only_in_cidrs() {
        let plan = Plan::defaults();
        assert_eq!(desired(&plan, Family::V4), desired(&plan, Family::V6));
    }

    #[test]
    fn rules_never_name_a_foreign_chain_as_ours() {
        let slice = desired(&Plan::defaults(), Family::V4);
        assert!(slice.chains.iter().all(|c| is_owned_chain(&c.name)));
        assert!(slice.jumps.iter().all(|j| !is_owned_chain(&j.chain)));
        assert_eq!(slice.chains.len(), OWNED_CHAINS.len());
    }
}
