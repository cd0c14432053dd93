//! A route's body transforms, compiled: the format each direction reads, its JSON
//! edits, the format it writes. Pure functions over whole bodies; reading the
//! bodies, their bounds and the statuses of a refusal are the request path's
//! ([`crate::outbound::transform`]).

pub(crate) mod json;
pub(crate) mod xml;

use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use pillion_api::transform::{BodyTransform, Convert, Transform};

/// A route's transforms, both ways.
#[derive(Debug)]
pub(crate) struct Transforms {
    /// The caller's body, on its way upstream.
    pub request: Option<Rewrite>,
    /// The upstream's answer, on its way back.
    pub response: Option<Rewrite>,
    /// Bodies are read whole up to this size.
    pub max_body_bytes: u64,
}

/// One direction's rewrite.
#[derive(Debug)]
pub(crate) struct Rewrite {
    convert: Option<Convert>,
    xml_root: Option<String>,
    edits: json::Edits,
}

/// Why a body could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Problem {
    /// Its `Content-Type` or `Content-Encoding` is not what the rewrite reads.
    #[error("the body must be {0} (uncompressed, UTF-8)")]
    MediaType(&'static str),
    /// It does not parse, or an edit cannot apply to it.
    #[error("{0}")]
    Body(String),
}

/// A body format the rewrites read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON (application/json or +json)",
            Format::Xml => "XML (application/xml, text/xml or +xml)",
        }
    }

    fn essence(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml",
        })
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml; charset=utf-8",
        })
    }
}

impl Transforms {
    /// Compiles a validated transform; `None` if a pointer does not parse.
    pub(crate) fn compile(transform: &Transform) -> Option<Transforms> {
        let rewrite = |body: &Option<BodyTransform>| match body {
            Some(body) => Rewrite::compile(body).map(Some),
            None => Some(None),
        };
        Some(Transforms {
            request: rewrite(&transform.request)?,
            response: rewrite(&transform.response)?,
            max_body_bytes: transform.max_body_bytes,
        })
    }
}

impl Rewrite {
    fn compile(body: &BodyTransform) -> Option<Rewrite> {
        Some(Rewrite {
            convert: body.convert,
            xml_root: body.xml_root.clone(),
            edits: json::Edits::compile(&body.json)?,
        })
    }

    fn reads(&self) -> Format {
        match self.convert {
            Some(Convert::XmlToJson) => Format::Xml,
            _ => Format::Json,
        }
    }

    fn writes(&self) -> Format {
        match self.convert {
            Some(Convert::JsonToXml) => Format::Xml,
            _ => Format::Json,
        }
    }

    /// The type of the bodies this rewrite reads, when it converts (else `None`:
    /// JSON in, JSON out).
    pub(crate) fn converts_from(&self) -> Option<HeaderValue> {
        self.convert.map(|_| self.reads().essence())
    }

    /// The type of the bodies this rewrite writes, when it converts.
    pub(crate) fn converts_to(&self) -> Option<HeaderValue> {
        self.convert.map(|_| self.writes().content_type())
    }

    /// Checks that a message with `headers` carries a body this rewrite reads.
    pub(crate) fn accepts(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let wanted = self.reads();
        if body_format(headers) != Some(wanted) {
            return Err(Problem::MediaType(wanted.name()));
        }
        Ok(())
    }

    /// Rewrites a whole body; the answer's new `Content-Type` comes with it when
    /// the format changed.
    pub(crate) fn apply(&self, body: &[u8]) -> Result<(Vec<u8>, Option<HeaderValue>), Problem> {
        let bad = |e: &dyn std::fmt::Display| Problem::Body(e.to_string());
        let mut doc: Value = match self.reads() {
            Format::Json => serde_json::from_slice(body)
                .map_err(|e| Problem::Body(format!("the body is not JSON: {e}")))?,
            Format::Xml => xml::to_json(body).map_err(|e| bad(&e))?,
        };
        if !self.edits.is_empty() {
            self.edits.apply(&mut doc).map_err(|e| bad(&e))?;
        }
        let out = match self.writes() {
            Format::Json => serde_json::to_vec(&doc).map_err(|e| bad(&e))?,
            Format::Xml => xml::from_json(&doc, self.xml_root.as_deref()).map_err(|e| bad(&e))?,
        };
        let retyped = (self.reads() != self.writes()).then(|| self.writes().content_type());
        Ok((out, retyped))
    }
}

/// Whether a message with `headers` carries JSON, uncompressed.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    body_format(headers) == Some(Format::Json)
}

/// The format of a message's body: one `Content-Type` the rewrites read, and no
/// `Content-Encoding` but `identity`.
fn body_format(headers: &HeaderMap) -> Option<Format> {
    let encoded = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(one), None) if !encoded => format_of(one),
        _ => None,
    }
}

/// The format a `Content-Type` names, if it is one the rewrites read (and says no
/// charset but UTF-8).
fn format_of(value: &HeaderValue) -> Option<Format> {
    let value = value.to_str().ok()?;
    let mut parts = value.split(';');
    let essence = parts.next()?.trim().to_ascii_lowercase();
    for param in parts {
        let (name, val) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("charset")
            && !val.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return None;
        }
    }
    let (kind, sub) = essence.split_once('/')?;
    match (kind, sub) {
        ("application", "json") => Some(Format::Json),
        ("application" | "text", "xml") => Some(Format::Xml),
        (_, sub) if sub.ends_with("+json") => Some(Format::Json),
        (_, sub) if sub.ends_with("+xml") => Some(Format::Xml),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rewrite(body: Value) -> Rewrite {
        let body: BodyTransform = serde_json::from_value(body).unwrap();
        Rewrite::compile(&body).unwrap()
    }

    fn typed(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn only_the_declared_format_is_accepted() {
        let json = rewrite(json!({"json": [{"remove": {"path": "/a"}}]}));
        for ok in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/problem+json",
            "application/json; charset=\"utf-8\"",
        ] {
            assert!(json.accepts(&typed(ok)).is_ok(), "{ok}");
        }
        for refused in [
            "text/plain",
            "application/json; charset=latin1",
            "application/xml",
            "application/jsonx",
            "json",
        ] {
            assert!(json.accepts(&typed(refused)).is_err(), "{refused}");
        }
        assert!(json.accepts(&HeaderMap::new()).is_err(), "no type");
        let mut gzipped = typed("application/json");
        gzipped.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(json.accepts(&gzipped).is_err(), "compressed");
        let mut two = typed("application/json");
        two.append(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(json.accepts(&two).is_err(), "two types");
        let xml = rewrite(json!({"convert": "xml_to_json"}));
        assert!(xml.accepts(&typed("text/xml")).is_ok());
        assert!(xml.accepts(&typed("application/atom+xml")).is_ok());
        assert!(xml.accepts(&typed("application/json")).is_err());
    }

    #[test]
    fn conversions_edit_the_json_side_and_retype() {
        let to_json = rewrite(json!({"convert": "xml_to_json",
                                     "json": [{"remove": {"path": "/order/@secret"}}]}));
        let (out, retyped) = to_json
            .apply(br#"<order id="1" secret="s"><n>2</n></order>"#)
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"order": {"@id": "1", "n": "2"}})
        );
        assert_eq!(retyped.unwrap(), "application/json");
        let to_xml = rewrite(json!({"convert": "json_to_xml", "xml_root": "order",
                                   "json": [{"rename": {"path": "/id", "to": "@id"}}]}));
        let (out, retyped) = to_xml.apply(br#"{"id": 3, "n": "x"}"#).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?><order id="3"><n>x</n></order>"#
        );
        assert_eq!(retyped.unwrap(), "application/xml; charset=utf-8");
        let (_, same) = rewrite(json!({"json": [{"remove": {"path": "/a"}}]}))
            .apply(b"{}")
            .unwrap();
        assert!(same.is_none());
    }

    #[test]
    fn a_body_that_does_not_parse_says_why() {
        let json = rewrite(json!({"json": [{"remove": {"path": "/a"}}]}));
        let e = json.apply(b"{\"a\": ").unwrap_err();
        assert!(e.to_string().starts_with("the body is not JSON"), "{e}");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            json.apply(deep.as_bytes()).is_err(),
            "serde_json's own depth bound"
        );
        let xml = rewrite(json!({"convert": "xml_to_json"}));
        assert!(xml.apply(b"<a>").is_err());
    }
}
