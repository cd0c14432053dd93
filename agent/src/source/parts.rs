//! A source in parts (the files of a directory, or the one file): each part parsed
//! on its own, and a change applied part by part to the catalog in force, so it
//! costs the parts it touched and those that refer to them, never the whole mesh.

use super::catalog::Catalog;
use super::file::{located, parse_file, SourceError};
use super::model::SourceFile;
use super::validate::{
    add_services, add_workloads, check_backend_services, check_gateway_backends,
};
use imbl::{HashMap, OrdMap, OrdSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One part as parsed: the text kept to place a later refusal in it.
#[derive(Debug)]
pub struct Parsed {
    /// What errors call it (its path) and what orders it among the parts.
    pub name: Arc<str>,
    /// Its text.
    pub text: String,
    /// Its entries.
    pub file: SourceFile,
}

/// A workload or service name one part may use from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Name {
    Workload(String, String),
    Service(String, String),
}

/// Changes to apply: a part's new content, or `None` when it is gone.
pub type Changes = BTreeMap<Arc<str>, Option<Arc<Parsed>>>;

/// What is kept of a part in force: its text, to check it again (parsed anew) when
/// a part it uses changes, and the names it uses. Its entries are in the catalog.
#[derive(Debug)]
pub struct Kept {
    /// Its text.
    pub text: String,
    uses: Vec<Name>,
}

/// The parts in force and the catalog they make.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    catalog: Catalog,
    applied: OrdMap<Arc<str>, Arc<Kept>>,
    /// The parts that use a name (an endpoint's workload, a route's backend).
    users: HashMap<Name, OrdSet<Arc<str>>>,
}

/// The parts after a change, and whether any proxy would see it.
#[derive(Debug)]
pub struct Applied {
    /// The parts in force after the change.
    pub parts: Parts,
    /// Whether the catalog differs from the one before.
    pub changed: bool,
}

impl Parts {
    /// The catalog the parts make.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// How many parts are in force.
    pub fn len(&self) -> usize {
        self.applied.len()
    }

    /// Whether no part is in force.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// The names of the parts in force.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.applied.keys()
    }

    /// The content in force for `part`, if any.
    pub fn applied(&self, part: &str) -> Option<&Kept> {
        self.applied.get(part).map(|k| &**k)
    }

    /// Applies `changes` all together, or refuses them all with the first problem
    /// (self is untouched either way). Parts that use a name a changed part defined
    /// (before or after) are checked and resolved again too.
    pub fn apply(&self, changes: &Changes, trust_domain: &str) -> Result<Applied, SourceError> {
        let mut defined: Vec<Name> = Vec::new();
        for (part, new) in changes {
            defined.extend(self.defined_by(part));
            defined.extend(new.iter().flat_map(|p| definitions(&p.file)));
        }
        let mut redo: Changes = changes.clone();
        for name in defined {
            for user in self.users.get(&name).into_iter().flatten() {
                if redo.contains_key(user) {
                    continue;
                }
                if let Some(theirs) = self.applied.get(user) {
                    // The text was parsed when it went in force; it parses again.
                    let file = parse_file(user, &theirs.text)?;
                    let parsed = Parsed {
                        name: user.clone(),
                        text: theirs.text.clone(),
                        file,
                    };
                    redo.insert(user.clone(), Some(Arc::new(parsed)));
                }
            }
        }
        let mut next = self.clone();
        for part in redo.keys() {
            next.catalog.remove_part(part);
            if let Some(old) = next.applied.remove(part) {
                for name in &old.uses {
                    let unused = match next.users.get_mut(name) {
                        Some(users) => {
                            users.remove(part);
                            users.is_empty()
                        }
                        None => false,
                    };
                    if unused {
                        next.users.remove(name);
                    }
                }
            }
        }
        let present = || {
            redo.iter()
                .filter_map(|(part, p)| Some((part, p.as_ref()?)))
        };
        for (part, p) in present() {
            add_workloads(&p.file, part, trust_domain, &mut next.catalog)
                .map_err(|e| located(&p.name, &p.text, e))?;
        }
        for (part, p) in present() {
            add_services(&p.file, part, &mut next.catalog)
                .map_err(|e| located(&p.name, &p.text, e))?;
        }
        for (part, p) in present() {
            check_backend_services(part, &next.catalog)
                .and_then(|()| check_gateway_backends(part, &next.catalog))
                .map_err(|e| located(&p.name, &p.text, e))?;
            let uses = uses(&p.file);
            for name in &uses {
                next.users
                    .entry(name.clone())
                    .or_default()
                    .insert(part.clone());
            }
            let kept = Kept {
                text: p.text.clone(),
                uses,
            };
            next.applied.insert(part.clone(), Arc::new(kept));
        }
        let changed = redo
            .keys()
            .any(|part| !self.catalog.same_part(&next.catalog, part));
        Ok(Applied {
            parts: next,
            changed,
        })
    }
}

impl Parts {
    /// The names `part` defines now.
    fn defined_by(&self, part: &str) -> Vec<Name> {
        let workloads = (self.catalog.workloads_of(part))
            .map(|w| Name::Workload(w.namespace.clone(), w.name.clone()));
        let services = (self.catalog.services_of(part))
            .map(|s| Name::Service(s.namespace.clone(), s.name.clone()));
        workloads.chain(services).collect()
    }
}

/// The names a part's new content defines.
fn definitions(file: &SourceFile) -> impl Iterator<Item = Name> + '_ {
    let workloads =
        (file.workloads.iter()).map(|w| Name::Workload(w.namespace.0.clone(), w.name.0.clone()));
    let services =
        (file.services.iter()).map(|s| Name::Service(s.namespace.0.clone(), s.name.0.clone()));
    workloads.chain(services)
}

/// The names a part uses (its own among them).
fn uses(file: &SourceFile) -> Vec<Name> {
    let mut names = Vec::new();
    for s in &file.services {
        for e in &s.endpoints {
            if let Some(w) = &e.workload {
                let ns = w.namespace.as_ref().unwrap_or(&s.namespace);
                names.push(Name::Workload(ns.0.clone(), w.name.0.clone()));
            }
        }
        let backends = (s.ports.iter().flat_map(|p| &p.routes))
            .flat_map(|r| r.sent_to())
            .filter_map(|b| b.service.as_ref());
        for b in backends {
            names.push(Name::Service(s.namespace.0.clone(), b.clone()));
        }
    }
    for w in &file.workloads {
        let ports = w.inbound.ports.values().filter_map(|p| p.jwt.as_ref());
        let hosts = (w.gateway.iter().flat_map(|g| &g.hosts)).filter_map(|h| h.jwt.as_ref());
        for x in ports.chain(hosts).filter_map(|j| j.introspection.as_ref()) {
            let service = x.service_in(&w.namespace.0);
            let (ns, name) = service.split_once('/').unwrap_or_default();
            names.push(Name::Service(ns.to_string(), name.to_string()));
        }
        let routes = (w.gateway.iter().flat_map(|g| &g.hosts)).flat_map(|h| &h.routes);
        for b in routes
            .flat_map(|r| r.sent_to())
            .filter_map(|b| b.service.as_ref())
        {
            let (ns, name) = b.split_once('/').unwrap_or((&w.namespace.0, b));
            names.push(Name::Service(ns.to_string(), name.to_string()));
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::parse_file;

    fn parsed(name: &str, text: &str) -> Option<Arc<Parsed>> {
        let file = parse_file(name, text).unwrap_or_else(|e| panic!("{e}"));
        Some(Arc::new(Parsed {
            name: Arc::from(name),
            text: text.to_string(),
            file,
        }))
    }

    fn changes(list: &[(&str, Option<&str>)]) -> Changes {
        (list.iter())
            .map(|(name, text)| (Arc::from(*name), text.and_then(|t| parsed(name, t))))
            .collect()
    }

    const SERVER: &str =
        "workloads:\n  - name: server\n    namespace: demo\n    addresses: [198.18.0.3]\n";
    const ECHO: &str = "services:\n  - name: echo\n    namespace: demo\n    addresses: [198.18.0.100]\n    ports: [{port: 80}]\n    endpoints:\n      - workload: server\n";

    #[test]
    fn a_part_resolves_names_of_another_and_follows_their_changes() {
        let start = Parts::default()
            .apply(&changes(&[("a", Some(SERVER)), ("b", Some(ECHO))]), "td")
            .unwrap();
        assert!(start.changed);
        let catalog = start.parts.catalog();
        let echo = catalog.service_named("demo", "echo").unwrap().1;
        assert_eq!(echo.endpoints[0].address.to_string(), "198.18.0.3");

        // The workload moves: the service of the other part follows.
        let moved = SERVER.replace("198.18.0.3", "198.18.0.4");
        let next = start
            .parts
            .apply(&changes(&[("a", Some(&moved))]), "td")
            .unwrap();
        assert!(next.changed);
        let echo = next
            .parts
            .catalog()
            .service_named("demo", "echo")
            .unwrap()
            .1;
        assert_eq!(echo.endpoints[0].address.to_string(), "198.18.0.4");

        // Removing the workload a service uses is refused, naming the user's file.
        let e = next
            .parts
            .apply(&changes(&[("a", None)]), "td")
            .unwrap_err();
        assert_eq!(e.file, "b");
        assert!(e.reason.contains("no workload named `server`"), "{e}");
        assert_eq!(next.parts.len(), 2, "a refused change changes nothing");

        // The same content again changes nothing a proxy sees.
        let same = next
            .parts
            .apply(&changes(&[("a", Some(&moved))]), "td")
            .unwrap();
        assert!(!same.changed);
    }

    #[test]
    fn names_and_addresses_are_unique_across_parts() {
        let start = Parts::default()
            .apply(&changes(&[("a", Some(SERVER)), ("b", Some(ECHO))]), "td")
            .unwrap()
            .parts;
        let again = ECHO.replace("198.18.0.100", "198.18.0.101");
        let e = start
            .apply(&changes(&[("c", Some(&again))]), "td")
            .unwrap_err();
        assert_eq!(e.file, "c");
        assert!(e.reason.contains("services[0] of b already has"), "{e}");
        let vip = ECHO.replace("name: echo", "name: other");
        let e = start
            .apply(&changes(&[("c", Some(&vip))]), "td")
            .unwrap_err();
        assert!(
            e.reason.contains("already an address of services[0] of b"),
            "{e}"
        );
        // A service moving from one part to another in one change is fine.
        let moved = start
            .apply(&changes(&[("b", None), ("c", Some(ECHO))]), "td")
            .unwrap();
        assert!(moved.changed);
        let (at, _) = moved.parts.catalog().service_named("demo", "echo").unwrap();
        assert_eq!(&*at.part, "c");
    }
}
