//! The agent's views on their way into the proxy: the control plane (or a test)
//! publishes each one, the proxy's compiler takes the newest and says which version
//! it compiled. Views are not compiled here: [`super::State`] is the one compiled form.

use std::sync::Arc;

use pillion_api::view::View;
use tokio::sync::watch;

/// The newest raw view and the version compiled from it; cheap to clone, every
/// clone sees the same channel.
#[derive(Clone, Debug)]
pub struct Views {
    latest: Arc<watch::Sender<Option<Arc<View>>>>,
    compiled: Arc<watch::Sender<Option<u64>>>,
}

impl Default for Views {
    fn default() -> Self {
        Views {
            latest: Arc::new(watch::Sender::new(None)),
            compiled: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Views {
    /// No view yet.
    pub fn new() -> Views {
        Views::default()
    }

    /// Makes `view` the newest; the proxy compiles it (a later one may overtake it).
    pub fn publish(&self, view: View) {
        self.latest.send_replace(Some(Arc::new(view)));
    }

    /// Publishes `view` and resolves once a running proxy serves the state compiled
    /// from it (for embedders and tests that send traffic right after).
    pub async fn install(&self, view: View) {
        let version = view.version;
        self.publish(view);
        self.compiled(version).await;
    }

    /// The newest raw view, for `/config` and logs (never on the request path).
    pub fn latest(&self) -> Option<Arc<View>> {
        self.latest.borrow().clone()
    }

    /// The version of the view the proxy's state was last compiled from.
    pub fn compiled_version(&self) -> Option<u64> {
        *self.compiled.borrow()
    }

    /// Resolves once the proxy serves the state compiled from view `version`.
    pub async fn compiled(&self, version: u64) {
        let mut rx = self.compiled.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|v| *v == Some(version)).await;
    }

    /// Follows the newest view, for the compiler.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<View>>> {
        self.latest.subscribe()
    }

    /// Records that the state of view `version` is being served.
    pub(crate) fn mark_compiled(&self, version: u64) {
        self.compiled.send_replace(Some(version));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn view(version: u64) -> View {
        serde_json::from_value(serde_json::json!({
            "version": version, "identity": "spiffe://cluster.local/ns/a/sa/b"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_newest_view_wins_and_compiles_are_announced() {
        let views = Views::new();
        assert!(views.latest().is_none());
        let mut rx = views.subscribe();
        views.publish(view(1));
        views.publish(view(2));
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().as_ref().map(|v| v.version), Some(2));
        assert_eq!(views.latest().map(|v| v.version), Some(2));

        let waiter = tokio::spawn({
            let views = views.clone();
            async move { views.compiled(2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        views.mark_compiled(2);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(views.compiled_version(), Some(2));
    }
}
