//! The agent's views on their way into the proxy: the control plane (or a test)
//! publishes each one, and with it what on-demand discovery learned
//! ([`Resolved`]); the proxy's compiler takes the newest pair and says how far it
//! got. Nothing is compiled here: [`super::State`] is the one compiled form.
//!
//! Every publish gets a sequence number; the compiler reports the number of the view
//! it handled last, so [`Views::install`] waits for *its* view or a later one, even
//! when a newer view overtakes it or the agent sends the same version twice.

use std::sync::Arc;

use pillion_api::view::View;
use tokio::sync::watch;

use super::resolved::Resolved;

/// A published view and its place in the order of publishing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Published {
    /// 1 for the first view published, then one more for each.
    pub(crate) seq: u64,
    /// The view (`None` before the first).
    pub(crate) view: Option<Arc<View>>,
    /// What on-demand discovery learned, compiled with the view.
    pub(crate) resolved: Arc<Resolved>,
}

/// What the compiler has handled last.
#[derive(Clone, Copy, Debug, Default)]
struct Handled {
    seq: u64,
    version: Option<u64>,
}

/// The newest raw view and how far the compiler got; cheap to clone, every clone sees
/// the same channels.
#[derive(Clone, Debug)]
pub struct Views {
    latest: Arc<watch::Sender<Published>>,
    handled: Arc<watch::Sender<Handled>>,
}

impl Default for Views {
    fn default() -> Self {
        Views {
            latest: Arc::new(watch::Sender::new(Published::default())),
            handled: Arc::new(watch::Sender::new(Handled::default())),
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
        self.publish_seq(view);
    }

    fn publish_seq(&self, view: View) -> u64 {
        let mut seq = 0;
        self.latest.send_modify(|p| {
            p.seq += 1;
            p.view = Some(Arc::new(view));
            seq = p.seq;
        });
        seq
    }

    /// Publishes `view` and resolves once a running proxy has handled it or a later
    /// view (for embedders and tests that send traffic right after).
    pub async fn install(&self, view: View) {
        let seq = self.publish_seq(view);
        self.handled(seq).await;
    }

    /// Makes `resolved` what discovery learned (with the newest view); returns the
    /// publish's number for [`Views::handled`].
    pub(crate) fn publish_resolved(&self, resolved: Resolved) -> u64 {
        let mut seq = 0;
        self.latest.send_modify(|p| {
            p.seq += 1;
            p.resolved = Arc::new(resolved);
            seq = p.seq;
        });
        seq
    }

    /// Resolves once publish `seq` or a later one has been handled.
    pub(crate) async fn handled(&self, seq: u64) {
        let mut rx = self.handled.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|h| h.seq >= seq).await;
    }

    /// The newest raw view, for `/config` and logs (never on the request path).
    pub fn latest(&self) -> Option<Arc<View>> {
        self.latest.borrow().view.clone()
    }

    /// The version of the view the proxy's state was last compiled from.
    pub fn compiled_version(&self) -> Option<u64> {
        self.handled.borrow().version
    }

    /// Follows the newest view, for the compiler.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Published> {
        self.latest.subscribe()
    }

    /// Records that publish `seq` has been handled: its state (of `version`) is
    /// served, or it failed to compile and the previous state keeps serving.
    pub(crate) fn mark_handled(&self, seq: u64, version: Option<u64>) {
        self.handled.send_modify(|h| {
            h.seq = h.seq.max(seq);
            if version.is_some() {
                h.version = version;
            }
        });
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
    async fn the_newest_view_wins_and_installs_wait_for_theirs_or_later() {
        let views = Views::new();
        assert!(views.latest().is_none());
        let mut rx = views.subscribe();
        views.publish(view(1));
        views.publish(view(2));
        rx.changed().await.unwrap();
        let newest = rx.borrow_and_update().clone();
        assert_eq!((newest.seq, newest.view.map(|v| v.version)), (2, Some(2)));
        assert_eq!(views.latest().map(|v| v.version), Some(2));

        // The same version again still waits for its own compile.
        let waiter = tokio::spawn({
            let views = views.clone();
            async move { views.install(view(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        views.mark_handled(2, Some(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "publish 3 is not handled yet");
        // A later publish overtaking it releases it too.
        views.publish(view(9));
        views.mark_handled(4, Some(9));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(views.compiled_version(), Some(9));
    }
}
