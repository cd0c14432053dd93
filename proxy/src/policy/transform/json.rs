//! A route's JSON edits, compiled: each pointer split into its steps once, then
//! applied in order to a parsed body. An edit finds nothing to do where its member
//! is missing (a `remove` of what is not there); it fails only where the body's
//! shape leaves no place for what it puts (a `set` through a string).

use serde_json::{Map, Value};

use pillion_api::transform::{parse_pointer, JsonEdit};

/// The edits of one direction, ready to run.
#[derive(Debug)]
pub(crate) struct Edits(Vec<Edit>);

#[derive(Debug)]
enum Edit {
    Set(Vec<String>, Value),
    Remove(Vec<String>),
    Rename(Vec<String>, String),
    Move(Vec<String>, Vec<String>),
}

/// Why an edit could not be applied: the pointer and what stood in the way.
#[derive(Debug, thiserror::Error)]
#[error("cannot {verb} {pointer}: {why}")]
pub(crate) struct EditError {
    verb: &'static str,
    pointer: String,
    why: &'static str,
}

impl Edits {
    /// Compiles validated edits; a pointer that does not parse (the agent checks
    /// them) makes `None`.
    pub(crate) fn compile(edits: &[JsonEdit]) -> Option<Edits> {
        edits
            .iter()
            .map(|edit| {
                Some(match edit {
                    JsonEdit::Set { path, value } => Edit::Set(steps(path)?, value.clone()),
                    JsonEdit::Remove { path } => Edit::Remove(steps(path)?),
                    JsonEdit::Rename { path, to } => Edit::Rename(steps(path)?, to.clone()),
                    JsonEdit::Move { from, to } => Edit::Move(steps(from)?, steps(to)?),
                })
            })
            .collect::<Option<Vec<_>>>()
            .map(Edits)
    }

    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Runs every edit on `doc`, in order.
    pub(crate) fn apply(&self, doc: &mut Value) -> Result<(), EditError> {
        for edit in &self.0 {
            match edit {
                Edit::Set(path, value) => {
                    set(doc, path, value.clone()).map_err(|why| EditError {
                        verb: "set",
                        pointer: pointer(path),
                        why,
                    })?
                }
                Edit::Remove(path) => {
                    take(doc, path);
                }
                Edit::Rename(path, to) => rename(doc, path, to),
                Edit::Move(from, to) => {
                    if let Some(value) = take(doc, from) {
                        set(doc, to, value).map_err(|why| EditError {
                            verb: "move to",
                            pointer: pointer(to),
                            why,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn steps(path: &str) -> Option<Vec<String>> {
    parse_pointer(path).filter(|steps| !steps.is_empty())
}

/// The pointer of `steps`, escaped again, for error messages.
fn pointer(steps: &[String]) -> String {
    steps
        .iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// An array index step: digits without a leading zero (RFC 6901 §4).
fn index(step: &str, len: usize) -> Option<usize> {
    if step.is_empty() || (step.len() > 1 && step.starts_with('0')) {
        return None;
    }
    step.parse::<usize>().ok().filter(|&i| i < len)
}

/// The value at `steps`, if there is one.
fn find_mut<'a>(mut at: &'a mut Value, steps: &[String]) -> Option<&'a mut Value> {
    for step in steps {
        at = match at {
            Value::Object(map) => map.get_mut(step)?,
            Value::Array(items) => {
                let i = index(step, items.len())?;
                items.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(at)
}

/// Puts `value` at `steps`, making missing objects on the way.
fn set(doc: &mut Value, steps: &[String], value: Value) -> Result<(), &'static str> {
    let Some((last, parents)) = steps.split_last() else {
        return Err("the whole document cannot be replaced");
    };
    let mut at = doc;
    for step in parents {
        at = match at {
            Value::Object(map) => map
                .entry(step.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => {
                let len = items.len();
                let i = index(step, len).ok_or("an array index on the way is not there")?;
                &mut items[i]
            }
            _ => return Err("a value on the way is neither an object nor an array"),
        };
    }
    match at {
        Value::Object(map) => {
            map.insert(last.clone(), value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            let len = items.len();
            let i = index(last, len).ok_or("the array index is not there")?;
            items[i] = value;
        }
        _ => return Err("its parent is neither an object nor an array"),
    }
    Ok(())
}

/// Takes out the value at `steps`, if there is one.
fn take(doc: &mut Value, steps: &[String]) -> Option<Value> {
    let (last, parents) = steps.split_last()?;
    match find_mut(doc, parents)? {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => {
            let i = index(last, items.len())?;
            Some(items.remove(i))
        }
        _ => None,
    }
}

/// Gives the member at `steps` the name `to` within its object, if it is there.
fn rename(doc: &mut Value, steps: &[String], to: &str) {
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    if let Some(Value::Object(map)) = find_mut(doc, parents) {
        if let Some(value) = map.remove(last) {
            map.insert(to.to_string(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn edits(json: Value) -> Edits {
        let edits: Vec<JsonEdit> = serde_json::from_value(json).unwrap();
        Edits::compile(&edits).unwrap()
    }

    #[test]
    fn edits_run_in_order() {
        let mut doc = json!({"user_id": 7, "debug": true, "address": {"zip": "1000", "city": "X"},
                             "tags": ["a", "b"]});
        edits(json!([
            {"set": {"path": "/meta/source", "value": "mobile"}},
            {"remove": {"path": "/debug"}},
            {"rename": {"path": "/user_id", "to": "userId"}},
            {"move": {"from": "/address/zip", "to": "/zip"}},
            {"set": {"path": "/tags/-", "value": "c"}},
            {"set": {"path": "/tags/0", "value": "A"}},
            {"remove": {"path": "/tags/1"}},
            {"set": {"path": "/a~1b", "value": null}},
        ]))
        .apply(&mut doc)
        .unwrap();
        assert_eq!(
            doc,
            json!({"userId": 7, "meta": {"source": "mobile"}, "address": {"city": "X"},
                   "zip": "1000", "tags": ["A", "c"], "a/b": null})
        );
    }

    #[test]
    fn missing_members_are_left_alone() {
        let mut doc = json!({"a": 1, "s": "text", "list": [1]});
        let before = doc.clone();
        edits(json!([
            {"remove": {"path": "/nope"}},
            {"remove": {"path": "/s/x"}},
            {"remove": {"path": "/list/5"}},
            {"remove": {"path": "/list/00"}},
            {"rename": {"path": "/nope", "to": "x"}},
            {"move": {"from": "/nope", "to": "/x"}},
        ]))
        .apply(&mut doc)
        .unwrap();
        assert_eq!(doc, before);
    }

    #[test]
    fn a_body_of_another_shape_is_an_error_not_a_panic() {
        let cases = [
            (
                json!({"s": "text"}),
                json!([{"set": {"path": "/s/x", "value": 1}}]),
            ),
            (json!([1, 2]), json!([{"set": {"path": "/x", "value": 1}}])),
            (
                json!({"l": [1]}),
                json!([{"set": {"path": "/l/3", "value": 1}}]),
            ),
            (
                json!({"l": [1]}),
                json!([{"set": {"path": "/l/x/y", "value": 1}}]),
            ),
            (
                json!("scalar"),
                json!([{"set": {"path": "/x", "value": 1}}]),
            ),
            (
                json!({"a": 1, "s": "t"}),
                json!([{"move": {"from": "/a", "to": "/s/a"}}]),
            ),
        ];
        for (mut doc, list) in cases {
            let e = edits(list.clone()).apply(&mut doc).unwrap_err();
            assert!(e.to_string().starts_with("cannot "), "{list}: {e}");
        }
    }
}
