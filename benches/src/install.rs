//! The benchmark's own set-up step: make sure the peer proxies (nginx with its stream
//! module, HAProxy) and `taskset` are installed, installing missing Debian packages
//! with apt-get. Idempotent: nothing is run when everything is there.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// nginx's dynamic TCP (stream) module, loaded by the nginx template.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The Debian packages the benchmark needs, for the CI script and error messages.
pub const APT_PACKAGES: &[&str] = &["nginx", "libnginx-mod-stream", "haproxy", "util-linux"];

/// One thing the benchmark needs and the package that brings it.
struct Need {
    present: fn() -> bool,
    what: &'static str,
    package: &'static str,
}

const NEEDS: &[Need] = &[
    Need {
        present: || on_path("nginx"),
        what: "nginx",
        package: "nginx",
    },
    Need {
        present: || Path::new(NGINX_STREAM_MODULE).exists(),
        what: "nginx's stream module",
        package: "libnginx-mod-stream",
    },
    Need {
        present: || on_path("haproxy"),
        what: "haproxy",
        package: "haproxy",
    },
    Need {
        present: || on_path("taskset"),
        what: "taskset",
        package: "util-linux",
    },
];

/// Installs whatever is missing; an error names the packages when that fails.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    eprintln!("set-up: installing {} with apt-get", packages.join(" "));
    let tried = apt_install(&packages, false).or_else(|_| apt_install(&packages, true));
    let still: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.what)
        .collect();
    if !still.is_empty() {
        let why = tried.err().map(|e| format!(": {e:#}")).unwrap_or_default();
        bail!(
            "missing {} and apt-get could not install them{why}\n  \
             install them by hand: apt-get install -y {}",
            still.join(", "),
            APT_PACKAGES.join(" ")
        );
    }
    Ok(())
}

/// `apt-get install -y` (after `apt-get update` when `update`); services stay stopped
/// where the image's policy-rc.d says so, and the benchmark never uses them anyway.
fn apt_install(packages: &[&str], update: bool) -> Result<()> {
    if update {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether `program` is an executable file somewhere on `PATH` (like `command -v`).
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("surely-not-a-program-here"));
    }
}
