//! Reads the process's effective capabilities, so a missing CAP_NET_ADMIN is reported
//! plainly before any iptables binary runs and fails with a vaguer message.

/// Bit of CAP_NET_ADMIN in the kernel's capability sets.
const CAP_NET_ADMIN_BIT: u32 = 12;

/// Whether this process holds CAP_NET_ADMIN, or `None` when that cannot be read (then
/// iptables' own errors are relied upon).
pub fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    net_admin_in_status(&status)
}

/// Reads the `CapEff:` line of a `/proc/<pid>/status` text.
pub fn net_admin_in_status(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some(bits & (1 << CAP_NET_ADMIN_BIT) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let full = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(net_admin_in_status(full), Some(true));
        let without = "CapEff:\t000001fffeffefff\n";
        assert_eq!(net_admin_in_status(without), Some(false));
        assert_eq!(
            net_admin_in_status("CapEff:\t0000000000001000\n"),
            Some(true)
        );
        assert_eq!(net_admin_in_status("Name:\tx\n"), None);
        assert_eq!(net_admin_in_status("CapEff:\tzz\n"), None);
    }
}
