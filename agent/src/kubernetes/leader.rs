//! One writer among the agent's replicas. Every replica signs and serves watches;
//! only the holder of a Kubernetes Lease writes to the API server (the webhook's
//! caBundle, the trust-anchor ConfigMaps), so two replicas never fight over an
//! object, and a replica that goes away hands the Lease on when it stops (released)
//! or when its Lease runs out (killed). The election is `kube-lease-manager`'s:
//! server-side apply with conflict detection on one Lease object.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Name of the Lease the replicas contend for.
pub const LEASE_NAME: &str = "pillion-agent";
/// How long a Lease holds without renewal: a killed leader's writes resume at
/// another replica within this.
pub const LEASE_SECONDS: u64 = 15;
/// How long before expiry the holder renews.
const GRACE_SECONDS: u64 = 5;
/// Wait between attempts to set the election up when the API server refuses.
const RETRY: Duration = Duration::from_secs(2);
/// How long a stopping leader has to release the Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the Lease lives, who this replica is, and how long a Lease holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSpec {
    /// Namespace of the Lease (the agent's own).
    pub namespace: String,
    /// This replica's name in the Lease (its pod name).
    pub identity: String,
    /// Name of the Lease.
    pub lease: String,
    /// Seconds a Lease holds without renewal ([`LEASE_SECONDS`]).
    pub lease_seconds: u64,
    /// Seconds before expiry the holder renews (less than `lease_seconds`).
    pub grace_seconds: u64,
}

impl LeaderSpec {
    /// The Lease `pillion-agent` in `namespace` for replica `identity`, 15 s.
    pub fn new(namespace: &str, identity: &str) -> LeaderSpec {
        LeaderSpec {
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            lease: LEASE_NAME.to_string(),
            lease_seconds: LEASE_SECONDS,
            grace_seconds: GRACE_SECONDS,
        }
    }
}

/// Whether this replica may write: what the election says, checked against the
/// Lease itself before each write.
#[derive(Clone)]
pub struct Leader {
    /// What the election says now.
    pub elected: watch::Receiver<bool>,
    client: Client,
    spec: LeaderSpec,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("elected", &*self.elected.borrow())
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Leader {
    /// Waits until the election says this replica leads; `false` when it never
    /// will (shutting down).
    pub async fn leading(&mut self) -> bool {
        self.elected.wait_for(|l| *l).await.is_ok()
    }

    /// Waits until the election says this replica no longer leads; `false` when
    /// the election ended.
    pub async fn lost(&mut self) -> bool {
        self.elected.wait_for(|l| !*l).await.is_ok()
    }

    /// Whether the election says this replica leads now.
    pub fn is_elected(&self) -> bool {
        *self.elected.borrow()
    }

    /// Reads the Lease before a write: this replica must hold it and its last
    /// renewal must still be in force. The election alone is not enough: a leader
    /// that cannot renew (the API server unreachable for its Lease, or refusing it)
    /// goes on believing it leads while another replica takes the Lease; this check
    /// is what keeps it from writing then.
    pub async fn confirm(&self) -> bool {
        confirm(&self.client, &self.spec).await
    }
}

/// Whether `spec`'s replica holds its Lease with an unexpired renewal, by a read of
/// the Lease (see [`Leader::confirm`]).
pub async fn confirm(client: &Client, spec: &LeaderSpec) -> bool {
    let api: Api<Lease> = Api::namespaced(client.clone(), &spec.namespace);
    let lease = match api.get(&spec.lease).await {
        Ok(lease) => lease,
        Err(error) => {
            tracing::warn!(lease = %spec.lease, %error, "cannot read the Lease; not writing");
            return false;
        }
    };
    let Some(lease) = lease.spec else {
        return false;
    };
    let holds = lease.holder_identity.as_deref() == Some(spec.identity.as_str());
    let duration = lease
        .lease_duration_seconds
        .map_or(0, |d| i64::from(d.max(0)));
    let in_force = lease.renew_time.is_some_and(|renewed| {
        renewed.0.as_second().saturating_add(duration)
            > k8s_openapi::jiff::Timestamp::now().as_second()
    });
    holds && in_force
}

/// The field manager of replica `identity`'s Lease writes.
pub fn field_manager(identity: &str) -> String {
    format!("pillion-agent-{identity}")
}

/// Takes part in the election until `shutdown`, then releases the Lease if held.
/// The election starts as not leading.
pub fn elect(
    client: Client,
    spec: LeaderSpec,
    shutdown: CancellationToken,
) -> (Leader, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let leader = Leader {
        elected: rx,
        client: client.clone(),
        spec: spec.clone(),
    };
    let task = tokio::spawn(async move {
        loop {
            let built = LeaseManagerBuilder::new(client.clone(), spec.lease.clone())
                .with_namespace(spec.namespace.clone())
                .with_identity(spec.identity.clone())
                // Named after the replica (the crate's default is random), so the
                // Lease's managedFields say who wrote what.
                .with_field_manager(field_manager(&spec.identity))
                .with_duration(spec.lease_seconds.max(2))
                .with_grace(spec.grace_seconds.clamp(1, spec.lease_seconds.max(2) - 1))
                .with_create_mode(LeaseCreateMode::AutoCreate)
                .build()
                .await;
            let manager = match built {
                Ok(manager) => manager,
                Err(error) => {
                    tracing::warn!(lease = %spec.lease, namespace = %spec.namespace, %error,
                        "cannot join the leader election; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            let (mut state, running) = manager.watch().await;
            loop {
                let now = *state.borrow_and_update();
                if tx.send_replace(now) != now {
                    tracing::info!(identity = %spec.identity, lease = %spec.lease, leading = now,
                        "leadership changed");
                }
                tokio::select! {
                    () = shutdown.cancelled() => {
                        tx.send_replace(false);
                        // Dropping the receiver makes the manager release the Lease.
                        drop(state);
                        let _ = tokio::time::timeout(RELEASE_TIMEOUT, running).await;
                        return;
                    }
                    changed = state.changed() => if changed.is_err() { break },
                }
            }
            // The manager gave up (its task ended): nobody here leads; start over.
            tx.send_replace(false);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    });
    (leader, task)
}
