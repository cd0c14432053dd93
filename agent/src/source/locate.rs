//! Finds the line and column of an [`EntryPath`] in YAML text, so semantic errors
//! found after parsing still point at the offending line.
//!
//! It walks the document with serde_yaml_ng itself, following the path, and fails on
//! purpose at the target node: the parser stamps that failure with the node's own
//! position, which is then read back. No second YAML parser is involved.

use super::path::{EntryPath, Seg};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// 1-based line and column of the node at `path`, or `None` when the path isn't there.
pub fn locate(text: &str, path: &EntryPath) -> Option<(usize, usize)> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match (Walk { path: &path.0 }).deserialize(de) {
        Ok(()) => None,
        Err(err) => err.location().map(|l| (l.line(), l.column())),
    }
}

/// Follows the remaining path; at its end, fails so the parser marks the position.
struct Walk<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.path.split_first() {
            None => d.deserialize_any(Here),
            Some((Seg::Key(key), rest)) => d.deserialize_any(InMap { key, rest }),
            Some((Seg::Index(index), rest)) => d.deserialize_any(InSeq {
                index: *index,
                rest,
            }),
        }
    }
}

/// Fails on whatever node it is given (every default `visit_*` is an error).
struct Here;

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the located node")
    }
}

/// Accepts any scalar without error, so `InMap` and `InSeq` treat a scalar where
/// they wanted a container the same way: the path just isn't there.
macro_rules! scalars_hold_nothing {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

/// Looks for `key` in a mapping and walks on into its value.
struct InMap<'p> {
    key: &'p str,
    rest: &'p [Seg],
}

impl<'de> Visitor<'de> for InMap<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // The whole mapping is consumed even past the key: the parser refuses a
        // mapping left half read.
        while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
            if key_matches(&key, self.key) {
                map.next_value_seed(Walk { path: self.rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    // Anything that is not a mapping simply doesn't contain the path.
    scalars_hold_nothing!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Looks for element `index` of a sequence and walks on into it.
struct InSeq<'p> {
    index: usize,
    rest: &'p [Seg],
}

impl<'de> Visitor<'de> for InSeq<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Maybe {
                walk: (i == self.index).then_some(Walk { path: self.rest }),
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    // Anything that is not a sequence simply doesn't contain the path.
    scalars_hold_nothing!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

/// Walks into a sequence element when it is the wanted one, else skips it.
struct Maybe<'p> {
    walk: Option<Walk<'p>>,
}

impl<'de> DeserializeSeed<'de> for Maybe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.walk {
            Some(walk) => walk.deserialize(d),
            None => d.deserialize_ignored_any(IgnoredAny).map(|_| ()),
        }
    }
}

/// Whether a YAML key (a string or, for port maps, a number) spells `wanted`.
fn key_matches(key: &serde_yaml_ng::Value, wanted: &str) -> bool {
    match key {
        serde_yaml_ng::Value::String(s) => s == wanted,
        serde_yaml_ng::Value::Number(n) => n.to_string() == wanted,
        serde_yaml_ng::Value::Bool(b) => b.to_string() == wanted,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
workloads:
  - name: a
    token: x
  - name: b
    token: y
services:
  - name: s
    ports:
      - port: 7000
    endpoints:
      - workload: b
        labels: {version: v1}
      - workload: nope
policy:
  7000: {mode: strict}
";

    #[test]
    fn finds_nested_entries() {
        let p = EntryPath::root("workloads").index(1).key("token");
        assert_eq!(locate(DOC, &p), Some((5, 12)));
        let p = EntryPath::root("services")
            .index(0)
            .key("endpoints")
            .index(1)
            .key("workload");
        assert_eq!(locate(DOC, &p), Some((13, 19)));
        let p = EntryPath::root("services")
            .index(0)
            .key("endpoints")
            .index(0);
        assert_eq!(locate(DOC, &p), Some((11, 9)));
        let p = EntryPath::root("policy").key(7000).key("mode");
        assert_eq!(locate(DOC, &p), Some((15, 16)));
    }

    #[test]
    fn missing_paths_give_none() {
        assert_eq!(locate(DOC, &EntryPath::root("nothing")), None);
        assert_eq!(locate(DOC, &EntryPath::root("workloads").index(9)), None);
        assert_eq!(
            locate(
                DOC,
                &EntryPath::root("workloads")
                    .index(0)
                    .key("name")
                    .key("deeper")
            ),
            None
        );
    }
}
