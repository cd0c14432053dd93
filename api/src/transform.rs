//! Body transformation on a client-side route: the calling pod's proxy rewrites
//! the JSON of requests and answers with a few declared edits, and converts
//! between XML and JSON, so a client and a service that disagree on a field name or
//! a format can still talk.
//!
//! ```yaml
//! transform:
//!   max_body_bytes: 1048576        # default 1 MiB: larger requests 413, answers 502
//!   request:
//!     json:
//!       - set: {path: /source, value: mobile}
//!       - remove: {path: /debug}
//!       - rename: {path: /user_id, to: userId}
//!       - move: {from: /address/zip, to: /zip}
//!   response:
//!     convert: xml_to_json         # or json_to_xml (with xml_root: order)
//!     json:
//!       - remove: {path: /order/internal}
//! ```
//!
//! Paths are JSON Pointers (RFC 6901: `/a/0/b`, `~1` for `/`, `~0` for `~`). The
//! edits run in order on the body's JSON: after `xml_to_json`, before
//! `json_to_xml`. A body whose type is not the declared one, that does not parse,
//! or whose shape an edit cannot apply to is refused (the caller's with `415` or
//! `400`, the upstream's with `502`), never passed on untouched.

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyError, PolicyProblem};

/// Default largest body a transform reads.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// Largest `max_body_bytes` a route may ask for.
pub const MAX_BODY_BYTES: u64 = 16 << 20;
/// Most edits one direction may carry.
pub const MAX_EDITS: usize = 64;
/// Deepest nesting a converted or edited document may have.
pub const MAX_DEPTH: usize = 64;

/// How a route rewrites the bodies going each way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// The caller's body, before it goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<BodyTransform>,
    /// The upstream's answer, before it reaches the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<BodyTransform>,
    /// Bodies are read whole to be rewritten; a larger one is refused.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// The rewrite of one direction's bodies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyTransform {
    /// A change of format; absent: the body is JSON and stays JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<Convert>,
    /// The root element `json_to_xml` wraps the JSON in; absent, the JSON must be
    /// an object with one member, which becomes the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml_root: Option<String>,
    /// Edits of the JSON, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json: Vec<JsonEdit>,
}

/// A change of a body's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convert {
    /// XML in, JSON out (`application/json`).
    XmlToJson,
    /// JSON in, XML out (`application/xml`).
    JsonToXml,
}

/// One edit of a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JsonEdit {
    /// Puts `value` at `path`, replacing what was there; missing objects on the
    /// way are made (`-` as the last step appends to an array).
    Set {
        /// Where.
        path: String,
        /// What.
        value: serde_json::Value,
    },
    /// Takes out what is at `path`, if anything is.
    Remove {
        /// What.
        path: String,
    },
    /// Gives the member at `path` the name `to` within the same object, if it is
    /// there.
    Rename {
        /// The member.
        path: String,
        /// Its new name (a plain name, not a path).
        to: String,
    },
    /// Moves what is at `from` to `to`, if it is there.
    Move {
        /// Where it is.
        from: String,
        /// Where it goes.
        to: String,
    },
}

impl Transform {
    /// Checks the bound and each direction; paths are relative to the transform.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES {
            return Err(PolicyError::new(
                "max_body_bytes",
                PolicyProblem::BadTransformBodyBytes,
            ));
        }
        if self.request.is_none() && self.response.is_none() {
            return Err(PolicyError::new("", PolicyProblem::EmptyTransform));
        }
        for (field, body) in [("request", &self.request), ("response", &self.response)] {
            if let Some(body) = body {
                body.validate().map_err(|e| e.within(field))?;
            }
        }
        Ok(())
    }
}

impl BodyTransform {
    /// Checks the conversion's root, and every edit's paths.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.convert.is_none() && self.json.is_empty() {
            return Err(PolicyError::new("", PolicyProblem::EmptyTransform));
        }
        if let Some(root) = &self.xml_root {
            if self.convert != Some(Convert::JsonToXml) {
                return Err(PolicyError::new("xml_root", PolicyProblem::RootWithoutXml));
            }
            if !is_xml_name(root) {
                return Err(PolicyError::new(
                    "xml_root",
                    PolicyProblem::BadXmlName(root.clone()),
                ));
            }
        }
        if self.json.len() > MAX_EDITS {
            return Err(PolicyError::new("json", PolicyProblem::TooManyEdits));
        }
        for (i, edit) in self.json.iter().enumerate() {
            edit.validate()
                .map_err(|e| e.within(format!("json[{i}]")))?;
        }
        Ok(())
    }
}

impl JsonEdit {
    /// Checks the edit's pointers (none may be the whole document) and a rename's
    /// new name.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let pointer = |field: &str, path: &str| match parse_pointer(path) {
            Some(tokens) if !tokens.is_empty() => Ok(()),
            _ => Err(PolicyError::new(
                field,
                PolicyProblem::BadPointer(path.to_string()),
            )),
        };
        match self {
            JsonEdit::Set { path, .. } | JsonEdit::Remove { path } => pointer("path", path),
            JsonEdit::Rename { path, to } => {
                pointer("path", path)?;
                if to.is_empty() {
                    return Err(PolicyError::new("to", PolicyProblem::Empty));
                }
                Ok(())
            }
            JsonEdit::Move { from, to } => {
                pointer("from", from)?;
                pointer("to", to)?;
                if to.starts_with(&format!("{from}/")) {
                    return Err(PolicyError::new(
                        "to",
                        PolicyProblem::MoveIntoItself(to.clone()),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The steps of a JSON Pointer (RFC 6901), unescaped; `None` when it is not one
/// (it must be empty or start with `/`, and `~` must be followed by `0` or `1`).
pub fn parse_pointer(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next()? {
                        '0' => out.push('~'),
                        '1' => out.push('/'),
                        _ => return None,
                    },
                    c => out.push(c),
                }
            }
            Some(out)
        })
        .collect()
}

/// Whether `name` can be an XML element or attribute name (the ASCII subset of
/// XML 1.0's `Name`, plus any non-ASCII letter; no `xml` prefix games are checked).
pub fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let starts = |c: char| c.is_alphabetic() || c == '_' || c == ':';
    starts(first) && chars.all(|c| starts(c) || c.is_alphanumeric() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml_json: &str) -> Transform {
        serde_json::from_str(yaml_json).unwrap()
    }

    #[test]
    fn transforms_parse_with_their_defaults() {
        let t = parse(
            r#"{"request": {"json": [{"set": {"path": "/a", "value": {"b": 1}}},
                                     {"remove": {"path": "/x"}},
                                     {"rename": {"path": "/user_id", "to": "userId"}},
                                     {"move": {"from": "/p/q", "to": "/q"}}]},
                "response": {"convert": "json_to_xml", "xml_root": "order"}}"#,
        );
        assert_eq!(t.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        t.validate().unwrap();
        let request = t.request.as_ref().unwrap();
        assert_eq!(request.json.len(), 4);
        assert_eq!(
            request.json[0],
            JsonEdit::Set {
                path: "/a".into(),
                value: serde_json::json!({"b": 1})
            }
        );
        assert!(serde_json::from_str::<Transform>(r#"{"requets": {}}"#).is_err());
        assert!(serde_json::from_str::<Transform>(
            r#"{"request": {"json": [{"delete": {"path": "/a"}}]}}"#
        )
        .is_err());
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        assert_eq!(parse_pointer(""), Some(vec![]));
        assert_eq!(parse_pointer("/"), Some(vec![String::new()]));
        assert_eq!(
            parse_pointer("/a~1b/m~0n/0"),
            Some(vec!["a/b".into(), "m~n".into(), "0".into()])
        );
        assert_eq!(parse_pointer("a"), None);
        assert_eq!(parse_pointer("/a~2"), None);
        assert_eq!(parse_pointer("/a~"), None);
    }

    #[test]
    fn bad_transforms_name_their_field() {
        let cases = [
            (r#"{}"#, "", "request or response"),
            (
                r#"{"request": {"json": []}, "max_body_bytes": 0}"#,
                "max_body_bytes",
                "1 to 16777216",
            ),
            (r#"{"request": {}}"#, "request", "request or response"),
            (
                r#"{"request": {"json": [{"remove": {"path": ""}}]}}"#,
                "request.json[0].path",
                "JSON Pointer",
            ),
            (
                r#"{"response": {"json": [{"set": {"path": "x", "value": 1}}]}}"#,
                "response.json[0].path",
                "JSON Pointer",
            ),
            (
                r#"{"response": {"json": [{"rename": {"path": "/x", "to": ""}}]}}"#,
                "response.json[0].to",
                "empty",
            ),
            (
                r#"{"response": {"json": [{"move": {"from": "/a", "to": "/a/b"}}]}}"#,
                "response.json[0].to",
                "inside",
            ),
            (
                r#"{"response": {"convert": "xml_to_json", "xml_root": "a"}}"#,
                "response.xml_root",
                "json_to_xml",
            ),
            (
                r#"{"response": {"convert": "json_to_xml", "xml_root": "1a"}}"#,
                "response.xml_root",
                "XML name",
            ),
        ];
        for (json, path, why) in cases {
            let e = parse(json).validate().unwrap_err();
            assert_eq!(e.path, path, "{json}");
            assert!(e.problem.to_string().contains(why), "{json}: {e}");
        }
        let many = Transform {
            request: Some(BodyTransform {
                json: vec![JsonEdit::Remove { path: "/a".into() }; MAX_EDITS + 1],
                ..BodyTransform::default()
            }),
            response: None,
            max_body_bytes: 1,
        };
        assert_eq!(many.validate().unwrap_err().path, "request.json");
    }

    #[test]
    fn xml_names_are_checked() {
        for good in ["a", "order", "ns:item", "_x", "a-b.c1", "ünï"] {
            assert!(is_xml_name(good), "{good}");
        }
        for bad in ["", "1a", "-a", "a b", "a<b", "a\"", "a/b"] {
            assert!(!is_xml_name(bad), "{bad}");
        }
    }
}
