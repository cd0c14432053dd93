//! XML ↔ JSON, one fixed mapping both ways, so a route's JSON edits can reach an
//! XML body and a JSON service can answer an XML client:
//!
//! - the document is an object with one member, the root element;
//! - an element with neither attributes nor child elements is its text (trimmed
//!   of XML white space; `""` when empty); otherwise an object whose attributes are `@name` members,
//!   child elements are members by name (repeated names make an array, in order),
//!   and text, if any, is `#text`;
//! - every value read from XML is a string: nothing is guessed about numbers.
//!
//! Written back, numbers and booleans become their JSON text and `null` an empty
//! element. A `DOCTYPE` is refused (no entity a document defines is ever
//! expanded), as are entities other than XML's five and character references,
//! documents nested deeper than [`MAX_DEPTH`], and names or characters XML cannot
//! carry.

use serde_json::{Map, Value};

use pillion_api::transform::{is_xml_name, MAX_DEPTH};
use quick_xml::escape::{escape, resolve_xml_entity};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

/// Why a body could not be converted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum XmlError {
    /// Not UTF-8.
    #[error("the XML is not UTF-8")]
    NotUtf8,
    /// Not well-formed, per the parser.
    #[error("the XML is not well-formed: {0}")]
    Syntax(String),
    /// Something the mapping refuses to read or cannot write.
    #[error("{0}")]
    Refused(&'static str),
    /// A name that cannot be an XML name (or one the mapping reserves, like `#text`).
    #[error("{0:?} cannot be an XML element or attribute name")]
    BadName(String),
}

/// An element being read: its name, attributes, children and text so far.
struct Open {
    name: String,
    members: Map<String, Value>,
    text: String,
}

impl Open {
    fn new(start: &BytesStart<'_>) -> Result<Open, XmlError> {
        let name = start.name().as_ref().to_string();
        if !is_xml_name(&name) {
            return Err(XmlError::BadName(name));
        }
        let mut members = Map::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| XmlError::Syntax(e.to_string()))?;
            if !is_xml_name(attr.key.as_ref()) {
                return Err(XmlError::BadName(attr.key.as_ref().to_string()));
            }
            let key = format!("@{}", attr.key.as_ref());
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| XmlError::Syntax(e.to_string()))?;
            members.insert(key, Value::String(value.into_owned()));
        }
        Ok(Open {
            name,
            members,
            text: String::new(),
        })
    }

    /// A child element read whole: a member by its name, an array when repeated.
    fn add_child(&mut self, name: String, value: Value) {
        match self.members.get_mut(&name) {
            Some(Value::Array(items)) => items.push(value),
            Some(single) => {
                let first = single.take();
                *single = Value::Array(vec![first, value]);
            }
            None => {
                self.members.insert(name, value);
            }
        }
    }

    /// The element's value, and its name.
    fn close(mut self) -> (String, Value) {
        let text = self.text.trim_matches(is_xml_space);
        let value = if self.members.is_empty() {
            Value::String(text.to_string())
        } else {
            if !text.is_empty() {
                self.members
                    .insert("#text".to_string(), Value::String(text.to_string()));
            }
            Value::Object(self.members)
        };
        (self.name, value)
    }
}

/// XML's white space (and only it: a no-break space is content).
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn utf8(bytes: &[u8]) -> Result<&str, XmlError> {
    std::str::from_utf8(bytes).map_err(|_| XmlError::NotUtf8)
}

/// Reads an XML document into JSON.
pub(crate) fn to_json(body: &[u8]) -> Result<Value, XmlError> {
    let text = utf8(body)?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Value> = None;
    let syntax = |e: quick_xml::Error| XmlError::Syntax(e.to_string());
    loop {
        let event = reader.read_event().map_err(syntax)?;
        let done = |name: String, value: Value, stack: &mut Vec<Open>, root: &mut Option<Value>| {
            match stack.last_mut() {
                Some(parent) => parent.add_child(name, value),
                None if root.is_none() => {
                    let mut doc = Map::new();
                    doc.insert(name, value);
                    *root = Some(Value::Object(doc));
                }
                None => return Err(XmlError::Refused("the XML has more than one root element")),
            }
            Ok(())
        };
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::Refused("the XML is nested too deeply"));
                }
                if root.is_some() {
                    return Err(XmlError::Refused("the XML has more than one root element"));
                }
                stack.push(Open::new(&start)?);
            }
            Event::Empty(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::Refused("the XML is nested too deeply"));
                }
                let (name, value) = Open::new(&start)?.close();
                done(name, value, &mut stack, &mut root)?;
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err(XmlError::Refused(
                        "the XML closes an element it never opened",
                    ));
                };
                let (name, value) = open.close();
                done(name, value, &mut stack, &mut root)?;
            }
            Event::Text(text) => {
                let content = text.xml10_content();
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&content),
                    None if content.chars().all(is_xml_space) => {}
                    None => return Err(XmlError::Refused("the XML has text outside its root")),
                }
            }
            Event::CData(data) => match stack.last_mut() {
                Some(open) => open.text.push_str(&data.xml10_content()),
                None => return Err(XmlError::Refused("the XML has text outside its root")),
            },
            Event::GeneralRef(reference) => {
                let open = stack
                    .last_mut()
                    .ok_or(XmlError::Refused("the XML has text outside its root"))?;
                match reference.resolve_char_ref().map_err(syntax)? {
                    Some(c) => open.text.push(c),
                    None => match resolve_xml_entity(&reference) {
                        Some(s) => open.text.push_str(s),
                        None => return Err(XmlError::Refused("the XML uses an entity it does not define (only XML's five and character references are read)")),
                    },
                }
            }
            Event::DocType(_) => {
                return Err(XmlError::Refused(
                    "the XML has a DOCTYPE, which is never read",
                ))
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Refused("the XML ends inside an element"));
    }
    root.ok_or(XmlError::Refused("the XML has no root element"))
}

/// Writes JSON as an XML document: as the element `root`, or, without one, as the
/// single member of a JSON object.
pub(crate) fn from_json(doc: &Value, root: Option<&str>) -> Result<Vec<u8>, XmlError> {
    let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    match root {
        Some(name) => element(&mut out, name, doc, 0)?,
        None => match doc {
            Value::Object(map) if map.len() == 1 => {
                for (name, value) in map {
                    if value.is_array() {
                        return Err(XmlError::Refused(
                            "the JSON's one member is an array, which cannot be a root element",
                        ));
                    }
                    element(&mut out, name, value, 0)?;
                }
            }
            _ => {
                return Err(XmlError::Refused(
                    "the JSON must be an object with one member, the root element",
                ))
            }
        },
    }
    Ok(out.into_bytes())
}

/// Writes `value` as the element `name`.
fn element(out: &mut String, name: &str, value: &Value, depth: usize) -> Result<(), XmlError> {
    if depth >= MAX_DEPTH {
        return Err(XmlError::Refused("the JSON is nested too deeply"));
    }
    if !is_xml_name(name) {
        return Err(XmlError::BadName(name.to_string()));
    }
    out.push('<');
    out.push_str(name);
    let Value::Object(map) = value else {
        return match value {
            Value::Null => {
                out.push_str("/>");
                Ok(())
            }
            Value::Array(_) => Err(XmlError::Refused(
                "an array inside an array cannot be written as XML",
            )),
            scalar => {
                out.push('>');
                text(out, scalar)?;
                close(out, name);
                Ok(())
            }
        };
    };
    let mut children = false;
    for (key, member) in map {
        match key.strip_prefix('@') {
            Some(attr) => {
                if !is_xml_name(attr) {
                    return Err(XmlError::BadName(key.clone()));
                }
                if matches!(member, Value::Object(_) | Value::Array(_)) {
                    return Err(XmlError::Refused(
                        "an attribute's value must be a string, number, boolean or null",
                    ));
                }
                out.push(' ');
                out.push_str(attr);
                out.push_str("=\"");
                text(out, member)?;
                out.push('"');
            }
            None => children = true,
        }
    }
    if !children {
        out.push_str("/>");
        return Ok(());
    }
    out.push('>');
    for (key, member) in map {
        if key.starts_with('@') {
            continue;
        }
        if key == "#text" {
            if matches!(member, Value::Object(_) | Value::Array(_)) {
                return Err(XmlError::Refused(
                    "#text must be a string, number, boolean or null",
                ));
            }
            text(out, member)?;
            continue;
        }
        match member {
            Value::Array(items) => {
                for item in items {
                    element(out, key, item, depth + 1)?;
                }
            }
            single => element(out, key, single, depth + 1)?,
        }
    }
    close(out, name);
    Ok(())
}

fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// Writes a scalar as escaped text; characters XML 1.0 cannot carry are refused.
fn text(out: &mut String, scalar: &Value) -> Result<(), XmlError> {
    let plain = match scalar {
        Value::String(s) => s.as_str(),
        Value::Null => return Ok(()),
        other => {
            out.push_str(&other.to_string());
            return Ok(());
        }
    };
    if plain.chars().any(|c| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    }) {
        return Err(XmlError::Refused(
            "the JSON has a character XML cannot carry",
        ));
    }
    // Line ends and tabs inside the text as references, so reading the document
    // back (which normalizes line ends) keeps them; text read from XML is already
    // trimmed, so what it gives back is the same.
    for c in escape(plain).chars() {
        match c {
            '\r' => out.push_str("&#xD;"),
            '\n' => out.push_str("&#xA;"),
            '\t' => out.push_str("&#x9;"),
            c => out.push(c),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn xml_reads_as_the_documented_json() {
        let xml = r#"<?xml version="1.0"?>
            <!-- an order -->
            <order id="7" state="new">
              <item sku="a1">Tea &amp; cake</item>
              <item sku="b2"><![CDATA[<raw>]]></item>
              <note>  two &#x41;&#66; </note>
              <empty/>
              <gift/>
              <total currency="EUR">12.50</total>
            </order>"#;
        assert_eq!(
            to_json(xml.as_bytes()).unwrap(),
            json!({"order": {
                "@id": "7", "@state": "new",
                "item": [{"@sku": "a1", "#text": "Tea & cake"}, {"@sku": "b2", "#text": "<raw>"}],
                "note": "two AB",
                "empty": "", "gift": "",
                "total": {"@currency": "EUR", "#text": "12.50"}
            }})
        );
    }

    #[test]
    fn json_writes_as_xml_and_reads_back_the_same() {
        let doc = json!({"order": {
            "@id": "7",
            "item": [{"@sku": "a1", "#text": "Tea & <cake>"}, {"@sku": "b2", "#text": "x\"y"}],
            "note": "two",
            "total": {"@currency": "EUR", "#text": "12.50"}
        }});
        let xml = from_json(&doc, None).unwrap();
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.contains("Tea &amp; &lt;cake&gt;"), "{text}");
        assert_eq!(to_json(&xml).unwrap(), doc);
        let wrapped = from_json(
            &json!({"n": 1, "ok": true, "none": null, "list": [1, 2]}),
            Some("r"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(wrapped).unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?><r><list>1</list><list>2</list><n>1</n><none/><ok>true</ok></r>"#
        );
    }

    #[test]
    fn only_xml_white_space_is_trimmed() {
        assert_eq!(
            to_json("<p>\u{A0}5 \n</p>".as_bytes()).unwrap(),
            json!({"p": "\u{A0}5"})
        );
        let deep_empty = format!(
            "{}<x/>{}",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert!(
            to_json(deep_empty.as_bytes()).is_err(),
            "an empty element counts as a level"
        );
    }

    #[test]
    fn hostile_or_broken_xml_is_refused() {
        let deep = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        let cases: [(&[u8], &str); 11] = [
            (b"<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>", "DOCTYPE"),
            (b"<a>&x;</a>", "entity"),
            (b"<a><b></a>", "well-formed"),
            (b"<a>", "ends inside"),
            (b"<a/><b/>", "more than one root"),
            (b"text", "outside its root"),
            (b"", "no root"),
            (b"<a>\xff</a>", "UTF-8"),
            (deep.as_bytes(), "too deeply"),
            (b"<a x=\"1\" x=\"2\"/>", "well-formed"),
            (b"<a>&#0;</a>", "well-formed"),
        ];
        for (xml, why) in cases {
            let e = to_json(xml).unwrap_err();
            assert!(
                e.to_string().contains(why),
                "{:?}: {e}",
                String::from_utf8_lossy(xml)
            );
        }
    }

    #[test]
    fn json_xml_cannot_carry_is_refused() {
        let cases = [
            (json!([1]), None, "one member"),
            (json!({"a": 1, "b": 2}), None, "one member"),
            (json!({"a": [1, 2]}), None, "array"),
            (json!({"1a": 1}), None, "XML element"),
            (json!({"a": {"@b c": 1}}), None, "XML element"),
            (json!({"a": {"@b": {"c": 1}}}), None, "attribute"),
            (json!({"a": [[1]]}), Some("r"), "array inside"),
            (json!({"a": "nul\u{0}"}), None, "cannot carry"),
            (json!({"a": {"#text": [1]}}), None, "#text"),
        ];
        for (doc, root, why) in cases {
            let e = from_json(&doc, root).unwrap_err();
            assert!(e.to_string().contains(why), "{doc}: {e}");
        }
    }
}
