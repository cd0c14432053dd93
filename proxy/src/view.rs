//! The agent's latest [`View`], compiled for per-connection lookups and kept in an
//! arc-swap: each new connection reads the newest snapshot without a lock, while
//! connections already open keep the decision they were made with.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use pillion_api::identity::IdentityPattern;
use pillion_api::view::{Mode, View};
use pillion_identity::SpiffeId;

/// How an outbound destination is reached, as the view says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A meshed endpoint: mutual TLS, the server must prove this identity.
    Meshed(SpiffeId),
    /// A known endpoint without an identity: plain TCP.
    Plain,
    /// Listed with an identity that is not a valid SPIFFE id: refused, never sent
    /// in plaintext by mistake.
    BadIdentity,
}

/// What the inbound side allows on one port.
#[derive(Clone, Debug)]
pub struct InboundRule {
    /// Whether plaintext is accepted.
    pub mode: Mode,
    /// Client identities allowed over mesh TLS; empty admits any authenticated peer.
    pub allow: Arc<[IdentityPattern]>,
    /// Set when some allow pattern of the view could not be parsed: such a pattern
    /// admits nobody (fail closed), and a non-empty `allow` list stays non-empty.
    pub had_bad_pattern: bool,
}

impl InboundRule {
    /// The rule without a view: permissive, anyone.
    pub fn open() -> InboundRule {
        InboundRule {
            mode: Mode::Permissive,
            allow: Arc::from(Vec::new()),
            had_bad_pattern: false,
        }
    }

    /// Whether an authenticated peer with identity `id` may connect.
    pub fn admits(&self, id: &SpiffeId) -> bool {
        (self.allow.is_empty() && !self.had_bad_pattern)
            || self.allow.iter().any(|p| p.matches(id.as_str()))
    }
}

/// One view, compiled: endpoints indexed by address, inbound patterns parsed.
#[derive(Debug)]
pub struct Snapshot {
    version: Option<u64>,
    endpoints: HashMap<SocketAddr, Destination>,
    default_rule: InboundRule,
    ports: HashMap<u16, InboundRule>,
}

impl Snapshot {
    /// The snapshot before any view arrived: no known endpoints, everything permissive.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: None,
            endpoints: HashMap::new(),
            default_rule: InboundRule::open(),
            ports: HashMap::new(),
        }
    }

    /// Compiles a view; bad identities and patterns are logged and fail closed.
    pub fn compile(view: &View) -> Snapshot {
        let mut endpoints = HashMap::new();
        for service in &view.services {
            for e in &service.endpoints {
                let addr = SocketAddr::new(canonical(e.address), e.port);
                let destination = match &e.identity {
                    None => Destination::Plain,
                    Some(text) => match SpiffeId::parse(text) {
                        Ok(id) => Destination::Meshed(id),
                        Err(err) => {
                            tracing::warn!(service = %service.name, endpoint = %addr, identity = %text, error = %err,
                                "endpoint identity is not a SPIFFE id; connections to it will be refused");
                            Destination::BadIdentity
                        }
                    },
                };
                // The first listing wins, as in `View::endpoint_for`.
                endpoints.entry(addr).or_insert(destination);
            }
        }
        let ports = view
            .inbound
            .ports
            .iter()
            .map(|(port, policy)| (*port, compile_rule(*port, policy.mode, &policy.allow)))
            .collect();
        Snapshot {
            version: Some(view.version),
            endpoints,
            default_rule: InboundRule {
                mode: view.inbound.default_mode,
                ..InboundRule::open()
            },
            ports,
        }
    }

    /// The version of the view this snapshot came from; `None` before the first view.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// How to reach `addr`; `None` when the view does not list it (plain passthrough).
    pub fn destination(&self, addr: SocketAddr) -> Option<&Destination> {
        self.endpoints
            .get(&SocketAddr::new(canonical(addr.ip()), addr.port()))
    }

    /// The inbound rule of the application port `port`.
    pub fn inbound(&self, port: u16) -> &InboundRule {
        self.ports.get(&port).unwrap_or(&self.default_rule)
    }
}

/// Parses one port's allow list; a pattern that does not parse admits nobody.
fn compile_rule(port: u16, mode: Mode, allow: &[String]) -> InboundRule {
    let mut patterns = Vec::with_capacity(allow.len());
    let mut had_bad_pattern = false;
    for text in allow {
        match IdentityPattern::parse(text) {
            Ok(p) => patterns.push(p),
            Err(err) => {
                had_bad_pattern = true;
                tracing::warn!(port, pattern = %text, error = %err, "inbound allow pattern ignored (it admits nobody)");
            }
        }
    }
    InboundRule {
        mode,
        allow: Arc::from(patterns),
        had_bad_pattern,
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Something that compiles its own form of each new view (the HTTP routes).
type Subscriber = Arc<dyn Fn(&View) + Send + Sync>;

/// The proxy's current view, shared by the watch (writer) and the stacks (readers).
#[derive(Clone)]
pub struct Views {
    current: Arc<ArcSwap<Snapshot>>,
    /// The raw newest view and who wants each new one, under one lock so a late
    /// subscriber never misses a view.
    subscribers: Arc<Mutex<(Option<View>, Vec<Subscriber>)>>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views")
            .field("version", &self.current.load().version())
            .finish_non_exhaustive()
    }
}

impl Default for Views {
    fn default() -> Self {
        Views {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::empty())),
            subscribers: Arc::new(Mutex::new((None, Vec::new()))),
        }
    }
}

impl Views {
    /// Views holding the empty snapshot (no view yet).
    pub fn new() -> Views {
        Views::default()
    }

    /// The newest snapshot; hold it for the whole decision about one connection.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A copy of the newest raw view, for the admin `/config` dump (never on the
    /// request path).
    pub fn latest_view(&self) -> Option<View> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Compiles and installs `view` for new connections, and hands it to every
    /// subscriber.
    pub fn install(&self, view: &View) {
        self.current.store(Arc::new(Snapshot::compile(view)));
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for subscriber in &subscribers.1 {
            subscriber(view);
        }
        subscribers.0 = Some(view.clone());
    }

    /// Calls `f` with every view installed from now on, and at once with the
    /// current one if there is one (views arrive seldom; `f` may compile).
    pub fn subscribe(&self, f: impl Fn(&View) + Send + Sync + 'static) {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(view) = &subscribers.0 {
            f(view);
        }
        subscribers.1.push(Arc::new(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(json: &str) -> View {
        serde_json::from_str(json).unwrap()
    }

    const SAMPLE: &str = r#"{"version": 4, "identity": "spiffe://cluster.local/ns/demo/sa/client",
      "services": [{"name": "echo", "namespace": "demo", "addresses": ["198.18.0.100"],
        "ports": [{"port": 7000}],
        "endpoints": [
          {"address": "198.18.0.3", "port": 7000, "identity": "spiffe://cluster.local/ns/demo/sa/server"},
          {"address": "2001:2::3", "port": 7000, "identity": "not an id"},
          {"address": "198.18.0.9", "port": 7000}]}],
      "inbound": {"default_mode": "strict", "ports": {
        "8080": {"mode": "permissive"},
        "7000": {"mode": "strict", "allow": ["spiffe://cluster.local/ns/demo/*"]},
        "7001": {"mode": "strict", "allow": ["bogus"]}}}}"#;

    #[test]
    fn destinations_by_address() {
        let s = Snapshot::compile(&view(SAMPLE));
        assert_eq!(s.version(), Some(4));
        let server: SpiffeId = "spiffe://cluster.local/ns/demo/sa/server".parse().unwrap();
        assert_eq!(
            s.destination("198.18.0.3:7000".parse().unwrap()),
            Some(&Destination::Meshed(server.clone()))
        );
        assert_eq!(
            s.destination("[::ffff:198.18.0.3]:7000".parse().unwrap()),
            Some(&Destination::Meshed(server))
        );
        assert_eq!(
            s.destination("[2001:2::3]:7000".parse().unwrap()),
            Some(&Destination::BadIdentity)
        );
        assert_eq!(
            s.destination("198.18.0.9:7000".parse().unwrap()),
            Some(&Destination::Plain)
        );
        assert_eq!(s.destination("198.18.0.3:7001".parse().unwrap()), None);
    }

    #[test]
    fn inbound_rules_and_patterns() {
        let s = Snapshot::compile(&view(SAMPLE));
        let client: SpiffeId = "spiffe://cluster.local/ns/demo/sa/client".parse().unwrap();
        let other: SpiffeId = "spiffe://cluster.local/ns/other/sa/client".parse().unwrap();
        assert_eq!(s.inbound(9999).mode, Mode::Strict);
        assert!(s.inbound(9999).admits(&other));
        assert_eq!(s.inbound(8080).mode, Mode::Permissive);
        let strict = s.inbound(7000);
        assert!(strict.admits(&client));
        assert!(!strict.admits(&other));
        // A pattern that does not parse admits nobody, rather than everybody.
        assert!(!s.inbound(7001).admits(&client));
    }

    #[test]
    fn no_view_is_permissive_and_empty() {
        let views = Views::new();
        let s = views.current();
        assert_eq!(s.version(), None);
        assert_eq!(s.inbound(1).mode, Mode::Permissive);
        assert!(s.destination("198.18.0.3:7000".parse().unwrap()).is_none());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let early = Arc::clone(&seen);
        views.subscribe(move |v| early.lock().unwrap().push(("early", v.version)));
        views.install(&view(SAMPLE));
        assert_eq!(views.current().version(), Some(4));
        let late = Arc::clone(&seen);
        views.subscribe(move |v| late.lock().unwrap().push(("late", v.version)));
        assert_eq!(*seen.lock().unwrap(), [("early", 4), ("late", 4)]);
        // The old snapshot held by an open connection is unchanged.
        assert_eq!(s.version(), None);
    }
}
