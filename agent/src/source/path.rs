//! The path of an entry in the source file, like `services[2].endpoints[0].identity`:
//! how semantic errors name what is wrong, and how the locator finds its line.

use std::fmt;

/// One step of an [`EntryPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from the document root to one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryPath(pub Vec<Seg>);

impl EntryPath {
    /// The path of a top-level key.
    pub fn root(key: &str) -> Self {
        Self(vec![Seg::Key(key.to_string())])
    }

    /// This path followed by a mapping key.
    pub fn key(&self, key: impl fmt::Display) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        Self(segs)
    }

    /// This path followed by a sequence index.
    pub fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        Self(segs)
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_serde_yaml_paths() {
        let p = EntryPath::root("services")
            .index(2)
            .key("endpoints")
            .index(0)
            .key("identity");
        assert_eq!(p.to_string(), "services[2].endpoints[0].identity");
    }
}
