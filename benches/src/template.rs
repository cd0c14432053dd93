//! Renders the peer proxies' config templates (`benches/configs/*.tmpl`): `{{name}}`
//! placeholders filled from a list, and an error for any name left over or unknown, so a
//! typo can never ship a half-rendered config to nginx or HAProxy.

use std::collections::BTreeMap;

/// A template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template names a placeholder no value was given for.
    #[error("placeholder {{{{{0}}}}} has no value")]
    Missing(String),
    /// A `{{` is never closed.
    #[error("unclosed placeholder at byte {0}")]
    Unclosed(usize),
    /// A value was given that the template never uses (a sign of a stale template).
    #[error("value {0:?} is not used by the template")]
    Unused(String),
}

/// Replaces every `{{name}}` in `template` with its value from `values`.
pub fn render(template: &str, values: &[(&str, String)]) -> Result<String, TemplateError> {
    let map: BTreeMap<&str, &str> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut used = BTreeMap::new();
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(TemplateError::Unclosed(offset + start))?;
        let name = after[..end].trim();
        let value = map
            .get(name)
            .ok_or_else(|| TemplateError::Missing(name.to_string()))?;
        used.insert(name, ());
        out.push_str(value);
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    if let Some((unused, _)) = values.iter().find(|(k, _)| !used.contains_key(k)) {
        return Err(TemplateError::Unused(unused.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_placeholder() {
        let out = render(
            "listen {{ip}}:{{port}}; # {{ip}}",
            &[("ip", "198.18.0.2".into()), ("port", "80".into())],
        )
        .unwrap();
        assert_eq!(out, "listen 198.18.0.2:80; # 198.18.0.2");
    }

    #[test]
    fn refuses_missing_unused_and_unclosed() {
        assert_eq!(
            render("{{a}}", &[]),
            Err(TemplateError::Missing("a".into()))
        );
        assert_eq!(
            render("x", &[("a", "1".into())]),
            Err(TemplateError::Unused("a".into()))
        );
        assert_eq!(render("ab {{a", &[]), Err(TemplateError::Unclosed(3)));
    }

    #[test]
    fn shipped_templates_render() {
        for (name, text) in crate::topology::TEMPLATES {
            let values = crate::topology::example_values(name);
            render(text, &values).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
