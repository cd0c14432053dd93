//! Reads and parses a source file, turning every problem into one
//! `<file>:<line>:<col>: <reason>` message.

use super::catalog::Catalog;
use super::locate::locate;
use super::model::SourceFile;
use super::validate::{validate, SemanticError};
use std::fmt;
use std::io;
use std::path::Path;

/// Why a source was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceError {
    /// The file, as given on the command line (or `<embedded default>`).
    pub file: String,
    /// 1-based line and column of the problem, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, naming the entry (`services[0].ports[1].port: ...`).
    pub reason: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl SourceError {
    /// The 1-based line of the problem, if known.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(l, _)| l)
    }

    /// A source file that cannot be read at all (missing, no permission), said the
    /// same way at start and by the poller.
    pub(crate) fn unreadable(name: &str, e: &io::Error) -> Self {
        SourceError {
            file: name.to_string(),
            position: None,
            reason: format!("cannot read the source file: {e}"),
        }
    }
}

/// Reads a source file from disk as UTF-8 text.
pub fn read_source(path: &Path) -> Result<String, SourceError> {
    source_text(&path.display().to_string(), std::fs::read(path))
}

/// The text of a source file from what reading it gave: the one check of a read at
/// start ([`read_source`]) and of every re-read by the poller.
pub(crate) fn source_text(name: &str, read: io::Result<Vec<u8>>) -> Result<String, SourceError> {
    let bytes = read.map_err(|e| SourceError::unreadable(name, &e))?;
    String::from_utf8(bytes).map_err(|e| SourceError {
        file: name.to_string(),
        position: None,
        reason: format!("the source file is not UTF-8 text: {e}"),
    })
}

/// Parses and validates source text; `name` is what error messages call the file.
pub fn parse_source(name: &str, text: &str, trust_domain: &str) -> Result<Catalog, SourceError> {
    let file = parse_file(name, text)?;
    validate(&file, name, trust_domain).map_err(|e| located(name, text, e))
}

/// Parses source text into its entries, unchecked against each other.
pub fn parse_file(name: &str, text: &str) -> Result<SourceFile, SourceError> {
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Err(SourceError {
            file: name.to_string(),
            position: None,
            reason: "the source file is empty: expected `workloads:` and/or `services:`".into(),
        });
    }
    serde_yaml_ng::from_str(text).map_err(|e| yaml_error(name, text, &e))
}

/// A check's refusal of file `name` (whose text is `text`), with its position.
pub(crate) fn located(name: &str, text: &str, e: SemanticError) -> SourceError {
    SourceError {
        file: name.to_string(),
        position: locate_nearest(text, &e.path),
        reason: format!("{}: {}", e.path, e.reason),
    }
}

/// The position of `path`, or of its nearest ancestor present in the text (a policy
/// error may name a part of a value, like a header inside `remove[1]`).
fn locate_nearest(text: &str, path: &super::path::EntryPath) -> Option<(usize, usize)> {
    let mut path = path.clone();
    while !path.0.is_empty() {
        if let Some(position) = locate(text, &path) {
            return Some(position);
        }
        path.0.pop();
    }
    None
}

/// Splits serde_yaml_ng's "message at line L column C" into position and reason.
fn yaml_error(name: &str, source: &str, e: &serde_yaml_ng::Error) -> SourceError {
    let text = e.to_string();
    let position = e.location().map(|l| (l.line(), l.column()));
    let reason = match position {
        Some((line, col)) => {
            let suffix = format!(" at line {line} column {col}");
            text.replacen(&suffix, "", 1)
        }
        None => text,
    };
    SourceError {
        file: name.to_string(),
        position: position.map(|p| within(source, p)),
        reason,
    }
}

/// The parser marks an error at the end of a file that does not end in a line break
/// on the line after its last; that points at the end of the last line instead.
fn within(source: &str, (line, column): (usize, usize)) -> (usize, usize) {
    // Line breaks as YAML counts them: LF, CRLF and a lone CR.
    let breaks = source.matches(['\n', '\r']).count() - source.matches("\r\n").count();
    if line <= breaks + 1 {
        return (line, column);
    }
    let last = source.rsplit(['\n', '\r']).next().unwrap_or_default();
    (breaks + 1, last.chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(text: &str) -> SourceError {
        match parse_source("t.yaml", text, "cluster.local") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn an_error_at_the_end_points_at_the_last_line() {
        // Found by the agent_source fuzzer: the parser's mark was on line 4 of 3.
        let text = "services:\n  - name: api\n    namessservicespace( :sh";
        let e = fails(text);
        assert_eq!(e.position, Some((3, 28)), "{e}");
        assert!(e.to_string().starts_with("t.yaml:3:28: "), "{e}");
    }

    #[test]
    fn unreadable_and_non_utf8_files_are_refused_without_a_position() {
        let missing = read_source(Path::new("/nonexistent/pillion-agent.yaml")).unwrap_err();
        assert_eq!(missing.file, "/nonexistent/pillion-agent.yaml");
        assert_eq!(missing.position, None);
        assert!(
            missing.reason.starts_with("cannot read the source file: "),
            "{missing}"
        );
        let binary = source_text("t.yaml", Ok(vec![b'a', 0xff])).unwrap_err();
        assert_eq!(binary.position, None);
        assert!(
            binary
                .reason
                .starts_with("the source file is not UTF-8 text: "),
            "{binary}"
        );
        assert_eq!(source_text("t.yaml", Ok(b"a: 1".to_vec())).unwrap(), "a: 1");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = fails("workloads:\n  - name: a\n   namespace: [\n");
        assert_eq!(e.file, "t.yaml");
        assert!(e.position.is_some(), "{e}");
        assert!(e.to_string().starts_with("t.yaml:"), "{e}");
        assert!(!e.reason.contains(" at line "), "{e}");
    }

    #[test]
    fn empty_files_are_refused() {
        let e = fails("# nothing here\n\n");
        assert!(e.reason.contains("empty"), "{e}");
    }
}
