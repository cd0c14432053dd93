//! Readiness as a set of named conditions, so each layer (listeners now, the
//! certificate and the first discovery view later) can hold `/ready` back on its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The shared readiness state; cheap to clone, every clone sees the same conditions.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<Vec<Condition>>>,
}

/// One named condition that must hold before the proxy reports ready.
///
/// Created unmet; the layer that owns it flips it with [`Condition::set`].
#[derive(Clone, Debug)]
pub struct Condition {
    name: Arc<str>,
    met: Arc<AtomicBool>,
}

impl Readiness {
    /// An empty readiness state (ready, since nothing is missing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new condition, initially unmet, and returns the handle that sets it.
    pub fn condition(&self, name: impl Into<Arc<str>>) -> Condition {
        let condition = Condition {
            name: name.into(),
            met: Arc::new(AtomicBool::new(false)),
        };
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(condition.clone());
        condition
    }

    /// Names of the conditions not met yet, in registration order.
    pub fn missing(&self) -> Vec<Arc<str>> {
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|c| !c.is_met())
            .map(|c| c.name.clone())
            .collect()
    }

    /// True when every registered condition is met.
    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }
}

impl Condition {
    /// Marks the condition met (`true`) or unmet again (`false`).
    pub fn set(&self, met: bool) {
        self.met.store(met, Ordering::Release);
    }

    /// Whether the condition is currently met.
    pub fn is_met(&self) -> bool {
        self.met.load(Ordering::Acquire)
    }

    /// The condition's name, as `/ready` reports it when unmet.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_is_met() {
        let r = Readiness::new();
        assert!(r.is_ready());
        let listeners = r.condition("listeners bound");
        let cert = r.clone().condition("certificate");
        assert_eq!(
            r.missing().iter().map(|n| &**n).collect::<Vec<_>>(),
            ["listeners bound", "certificate"]
        );
        listeners.set(true);
        assert_eq!(r.missing().len(), 1);
        assert_eq!(cert.name(), "certificate");
        cert.set(true);
        assert!(r.is_ready());
        listeners.set(false);
        assert!(!r.is_ready());
    }
}
