//! One binary, several programs: `<bin> init …` runs pillion-init, `<bin> proxy …`
//! runs pillion-proxy, `<bin> agent …` runs pillion-agent and `<bin> inject …`
//! pillion-inject, exactly as their own binaries would. `pillion` is such a binary
//! (so `pillion up` starts its pods' programs by running itself), and so are the
//! test and benchmark binaries, so each needs only one executable per pod.

use std::ffi::{OsStr, OsString};
use std::process::ExitCode;

/// The programs [`dispatch`] knows, by subcommand.
pub const PROGRAMS: &[&str] = &["init", "proxy", "agent", "inject"];

/// If `args[1]` names a program, runs it with the rest of the arguments (its argv[0]
/// set to `pillion-<program>` so its messages name it) and returns its exit code;
/// `None` if `args[1]` is not a program.
pub fn dispatch(args: Vec<OsString>) -> Option<ExitCode> {
    let mut args = args.into_iter();
    let _self_name = args.next();
    let program = args.next()?;
    let rest: Vec<OsString> = args.collect();
    let run: fn(Vec<OsString>) -> ExitCode = match program.to_str()? {
        "init" => pillion_init::cli::main_with_args,
        "proxy" => pillion_proxy::main_with_args,
        "agent" => pillion_agent::cli::main_with_args,
        "inject" => pillion_inject::cli::main_with_args,
        _ => return None,
    };
    Some(run(program_args(&program, rest)))
}

/// `pillion-<program>` followed by `rest`.
fn program_args(program: &OsStr, rest: Vec<OsString>) -> Vec<OsString> {
    let mut name = OsString::from("pillion-");
    name.push(program);
    std::iter::once(name).chain(rest).collect()
}

/// Usage text for a multicall binary called `bin`.
pub fn usage(bin: &str) -> String {
    format!(
        "usage: {bin} <{}> [flags…]\n(runs pillion-<program> with the given flags)",
        PROGRAMS.join("|")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn names_the_program() {
        assert_eq!(
            program_args(OsStr::new("init"), os(&["--dry-run"])),
            os(&["pillion-init", "--dry-run"])
        );
    }

    #[test]
    fn unknown_or_missing_programs_are_none() {
        assert!(dispatch(os(&["bin"])).is_none());
        assert!(dispatch(os(&["bin", "nope"])).is_none());
        assert!(dispatch(os(&["bin", "--help"])).is_none());
    }

    #[test]
    fn help_runs_the_program() {
        // clap answers --help with exit code 0 without touching anything.
        assert_eq!(
            dispatch(os(&["bin", "proxy", "--help"])),
            Some(ExitCode::SUCCESS)
        );
        assert_eq!(
            dispatch(os(&["bin", "init", "--help"])),
            Some(ExitCode::SUCCESS)
        );
        assert_eq!(
            dispatch(os(&["bin", "agent", "--help"])),
            Some(ExitCode::SUCCESS)
        );
    }
}
