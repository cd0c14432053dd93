//! Entry point of the agent's fuzz target (`fuzz/fuzz_targets/`), not an API: a
//! source file through the agent's reader, then each workload's view out as JSON and
//! back in as the proxy reads it. It panics only when an invariant breaks; the
//! replay test below runs every committed corpus file through it on stable.

use pillion_api::view::View;

use crate::source::file::{parse_file, parse_source, source_text, SourceError};
use crate::source::model::SourceFile;
use crate::source::parts::{Applied, Changes, Parsed, Parts};
use crate::source::validate::validate;
use crate::view::view_for;
use std::sync::Arc;

/// The agent's YAML source. A refused file's error points inside the file; an
/// accepted one gives every workload a view that survives the trip to the proxy
/// unchanged.
pub fn agent_source(data: &[u8]) {
    let name = "fuzz.yaml";
    let parsed = source_text(name, Ok(data.to_vec()))
        .and_then(|text| parse_source(name, &text, "cluster.local"));
    let catalog = match parsed {
        Ok(catalog) => catalog,
        Err(e) => {
            points_inside(&e, data);
            let _ = e.to_string();
            return;
        }
    };
    for workload in catalog.workloads() {
        let view = view_for(&catalog, workload, 1, "", crate::view::Discovery::Full);
        let json = serde_json::to_vec(&view).expect("a view serializes");
        let back: View = match serde_json::from_slice(&json) {
            Ok(back) => back,
            Err(e) => panic!(
                "the proxy cannot read the view: {e}\n{}",
                String::from_utf8_lossy(&json)
            ),
        };
        assert_eq!(back, view, "the view changed on the way to the proxy");
    }
}

/// The line that separates the files of one `agent_source_parts` input.
pub const PART_SEPARATOR: &str = "---8<---\n";

/// A source directory of up to four files (the input split at
/// [`PART_SEPARATOR`]). Applied as parts, the files give what one file holding
/// their entries in the same order gives: both accepted with the same catalog, or
/// both refused; the same holds after the last file is applied on its own and after
/// the first is removed. A refusal names one of the files and points inside it.
pub fn agent_source_parts(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts: Vec<Arc<Parsed>> = Vec::new();
    for (i, part) in text.split(PART_SEPARATOR).take(4).enumerate() {
        let name: Arc<str> = Arc::from(format!("{}.yaml", (b'a' + i as u8) as char));
        match parse_file(&name, part) {
            Ok(file) => parts.push(Arc::new(Parsed {
                name,
                text: part.to_string(),
                file,
            })),
            Err(e) => {
                points_inside(&e, part.as_bytes());
                return;
            }
        }
    }
    let changes = |of: &[Arc<Parsed>]| -> Changes {
        (of.iter())
            .map(|p| (p.name.clone(), Some(p.clone())))
            .collect()
    };
    let all = Parts::default().apply(&changes(&parts), TD);
    same_as_one_file(&all, &parts);
    let Some((last, but_last)) = parts.split_last() else {
        return;
    };
    // The last file applied on its own, onto the others.
    if let Ok(before) = Parts::default().apply(&changes(but_last), TD) {
        let after = before.parts.apply(&changes(std::slice::from_ref(last)), TD);
        same_as_one_file(&after, &parts);
    }
    // The first file removed.
    if let Ok(all) = &all {
        let first = parts[0].name.clone();
        let removed: Changes = [(first, None)].into_iter().collect();
        same_as_one_file(&all.parts.apply(&removed, TD), &parts[1..]);
    }
}

const TD: &str = "cluster.local";

/// Checks that `applied` is what one file with the entries of `parts` gives.
fn same_as_one_file(applied: &Result<Applied, SourceError>, parts: &[Arc<Parsed>]) {
    let mut one = SourceFile {
        workloads: Vec::new(),
        services: Vec::new(),
    };
    for p in parts {
        one.workloads.extend(p.file.workloads.iter().cloned());
        one.services.extend(p.file.services.iter().cloned());
    }
    let expected = validate(&one, "one.yaml", TD);
    match (applied, expected) {
        (Ok(applied), Ok(expected)) => {
            let catalog = applied.parts.catalog();
            assert!(
                catalog.same_content(&expected),
                "the parts' catalog differs from one file's"
            );
        }
        (Err(e), Err(_)) => {
            let part = parts.iter().find(|p| *p.name == e.file);
            let part = part.unwrap_or_else(|| panic!("{e} names no file of the source"));
            points_inside(e, part.text.as_bytes());
        }
        (Ok(_), Err(e)) => panic!("the parts were accepted, one file refused: {}", e.reason),
        (Err(e), Ok(_)) => panic!("the parts were refused, one file accepted: {e}"),
    }
}

/// A refusal's position, if any, is inside the file it names.
fn points_inside(e: &SourceError, data: &[u8]) {
    if let Some((line, column)) = e.position {
        let lines = yaml_lines(data);
        assert!(
            line >= 1 && line <= lines && column >= 1,
            "{e} points outside the file ({lines} lines)"
        );
    }
}

/// Lines as YAML counts them: LF, CRLF and a lone CR each end one.
fn yaml_lines(data: &[u8]) -> usize {
    let mut lines = 1;
    for (i, b) in data.iter().enumerate() {
        match b {
            b'\n' => lines += 1,
            b'\r' if data.get(i + 1) != Some(&b'\n') => lines += 1,
            _ => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/agent_source/`), so a crash
    //! the fuzzer once found stays fixed on stable `cargo test`.

    /// The fuzzer's first find was this target's own mistake: YAML (and the agent's
    /// error positions) end a line at a lone CR too, not only at LF.
    #[test]
    fn a_lone_cr_ends_a_line_as_in_yaml() {
        assert_eq!(super::yaml_lines(b"a\rb\r\nc\nd"), 4);
        super::agent_source(b"!A\r\r\r: x");
    }

    #[test]
    fn replay_agent_source() {
        pillion_api::fuzzing::replay_corpus("agent_source", super::agent_source);
    }

    #[test]
    fn replay_agent_source_parts() {
        pillion_api::fuzzing::replay_corpus("agent_source_parts", super::agent_source_parts);
    }
}
