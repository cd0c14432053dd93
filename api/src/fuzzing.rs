//! Entry points of the api crate's fuzz targets (`fuzz/fuzz_targets/`), not an API.
//!
//! They run arbitrary bytes through the one grammar of identity patterns and of
//! durations, and panic only when an invariant breaks; the replay test below runs
//! every committed corpus file through them on stable.

use crate::duration::{parse as parse_duration, HumaneDuration};
use crate::identity::IdentityPattern;

/// Identity patterns. Input: a pattern, then after the first newline an identity to
/// match it against. A parsed pattern prints as written and parses again to the same
/// pattern, matches the same identities, and a pattern without `*` admits its own
/// text.
pub fn identity_pattern(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, identity) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(parsed) = IdentityPattern::parse(pattern) else {
        return;
    };
    let printed = parsed.to_string();
    assert_eq!(printed, pattern, "a pattern prints as written");
    let again = IdentityPattern::parse(&printed).expect("a printed pattern parses again");
    assert_eq!(again, parsed);
    let matched = parsed.matches(identity);
    assert_eq!(again.matches(identity), matched);
    if pattern == "*" {
        assert!(matched, "`*` admits {identity:?}");
    }
    if !pattern.contains('*') {
        assert!(parsed.matches(pattern), "{pattern:?} does not admit itself");
        assert_eq!(matched, identity == pattern, "a literal admits only itself");
    }
    // An identity that is itself a literal pattern is admitted by exactly itself.
    if matched && !identity.contains('*') {
        if let Ok(literal) = IdentityPattern::parse(identity) {
            assert!(literal.matches(identity));
        }
    }
}

/// Durations (`500ms`, `1m30s`): what parses prints in the largest exact unit and
/// parses back to the same duration.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(d) = parse_duration(text) else {
        return;
    };
    let printed = HumaneDuration(d).to_string();
    let again = parse_duration(&printed).expect("a printed duration parses again");
    assert_eq!(again, d, "{text:?} printed as {printed:?}");
}

/// Runs every file of the committed corpus `fuzz/corpus/<target>/` through `run`, so a
/// crash a fuzzer once found stays fixed on stable `cargo test`; each crate's replay
/// tests call it with their own entry functions. Panics (the test's report) when the
/// folder is missing or empty.
pub fn replay_corpus(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!("{}", path.display());
        run(&data);
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/<target>/`), so a crash the
    //! fuzzers once found stays fixed on stable `cargo test`.

    #[test]
    fn replay_identity_pattern() {
        super::replay_corpus("identity_pattern", super::identity_pattern);
    }

    #[test]
    fn replay_duration() {
        super::replay_corpus("duration", super::duration);
    }
}
