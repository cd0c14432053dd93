//! Entry point of the agent's fuzz target (`fuzz/fuzz_targets/`), not an API: a
//! source file through the agent's reader, then each workload's view out as JSON and
//! back in as the proxy reads it. It panics only when an invariant breaks; the
//! replay test below runs every committed corpus file through it on stable.

use pillion_api::view::View;

use crate::source::file::{parse_source, source_text};
use crate::view::view_for;

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
            if let Some((line, column)) = e.position {
                let lines = yaml_lines(data);
                assert!(
                    line >= 1 && line <= lines && column >= 1,
                    "{e} points outside the file ({lines} lines)"
                );
            }
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
}
