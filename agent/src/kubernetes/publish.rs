//! What the agent writes to the cluster, and nothing else: the CA bundle into its
//! own MutatingWebhookConfiguration (so the API server trusts the webhook), and the
//! trust anchors ConfigMap into every namespace whose pods it injects (a pod can only
//! mount ConfigMaps of its own namespace). Both retry with backoff until they work,
//! and only while this replica leads ([`super::leader`]): one writer at a time, and a
//! new leader writes everything again.

use super::leader::Leader;
use super::watch::Stores;
use crate::ca::AgentCa;
use crate::server::inject::NamespaceSource;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use pillion_inject::annotations::{ENABLED, INJECT};
use pillion_inject::config::{TRUST_ANCHORS_CONFIGMAP, TRUST_ANCHORS_KEY};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Field manager of every server-side apply (and the RBAC-visible writer).
pub const FIELD_MANAGER: &str = "pillion-agent";
/// Name of the agent's MutatingWebhookConfiguration (`deploy/agent/webhook.yaml`).
pub const WEBHOOK_CONFIGURATION: &str = "pillion-injector";
/// First retry delay; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest wait between retries.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How often the namespace store is scanned for newly annotated namespaces.
const SCAN: Duration = Duration::from_secs(10);
/// Every this many scans, every ConfigMap is applied again (a deleted one comes back).
const REAPPLY_EVERY: u32 = 6;

/// Sets `caBundle` of every webhook of `name` to `bundle_pem`; returns how many.
/// The merge patch carries the resourceVersion read, so a concurrent edit makes it
/// fail (409) and the caller's retry starts over from a fresh read.
pub async fn patch_webhook_ca_bundle(
    client: &Client,
    name: &str,
    bundle_pem: &str,
) -> Result<usize, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut config = api.get(name).await?;
    let mut webhooks = config.webhooks.take().unwrap_or_default();
    for webhook in &mut webhooks {
        webhook.client_config.ca_bundle = Some(ByteString(bundle_pem.as_bytes().to_vec()));
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": config.metadata.resource_version},
        "webhooks": webhooks,
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(webhooks.len())
}

/// Keeps the webhook's caBundle at the CA's trust bundle while this replica leads:
/// sets it on taking the lead and again whenever the bundle changes (a rotation),
/// retrying with backoff, until `shutdown` fires.
pub fn spawn_webhook_patcher(
    client: Client,
    ca: Arc<AgentCa>,
    mut leader: Leader,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = ca.subscribe();
        loop {
            let mut delay = FIRST_RETRY;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    leads = leader.leading() => if !leads { return },
                }
                if !leader.confirm().await {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RETRY);
                    continue;
                }
                let bundle_pem = ca.trust_bundle_pem();
                match patch_webhook_ca_bundle(&client, WEBHOOK_CONFIGURATION, &bundle_pem).await {
                    Ok(n) => {
                        tracing::info!(
                            webhooks = n,
                            configuration = WEBHOOK_CONFIGURATION,
                            "webhook caBundle set to the agent's trust anchors"
                        );
                        break;
                    }
                    Err(e) => tracing::warn!(configuration = WEBHOOK_CONFIGURATION, error = %e,
                        retry_in = ?delay, "cannot set the webhook caBundle"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RETRY);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                // Lost the lead: patch again once it comes back.
                lost = leader.lost() => if !lost { return },
            }
        }
    })
}

/// The trust anchors ConfigMap for `namespace`, as applied.
pub fn trust_anchors_config_map(namespace: &str, bundle_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(TRUST_ANCHORS_CONFIGMAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/part-of".to_string(),
                    "pillion".to_string(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            TRUST_ANCHORS_KEY.to_string(),
            bundle_pem.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// Server-side applies the trust anchors ConfigMap into `namespace`.
pub async fn apply_trust_anchors(
    client: &Client,
    namespace: &str,
    bundle_pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = trust_anchors_config_map(namespace, bundle_pem);
    api.patch(
        TRUST_ANCHORS_CONFIGMAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

/// Namespace annotations from the watch, and trust anchors for injected namespaces.
#[derive(Debug)]
pub struct ClusterNamespaces {
    store: Store<Namespace>,
    injected: mpsc::UnboundedSender<String>,
}

impl NamespaceSource for ClusterNamespaces {
    fn annotations(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.store.get(&ObjectRef::new(name))?;
        Some(ns.metadata.annotations.clone().unwrap_or_default())
    }

    fn injected(&self, namespace: &str) {
        let _ = self.injected.send(namespace.to_string());
    }
}

/// Starts publishing the trust anchors into every namespace annotated for injection
/// and every namespace the webhook injected a pod of; returns the webhook's
/// namespace source and the publishing task.
pub fn start_trust_anchors(
    client: Client,
    stores: &Stores,
    ca: Arc<AgentCa>,
    mut leader: Leader,
    shutdown: CancellationToken,
) -> (Arc<ClusterNamespaces>, JoinHandle<()>) {
    let mut changes = ca.subscribe();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let namespaces = Arc::new(ClusterNamespaces {
        store: stores.namespaces.clone(),
        injected: tx,
    });
    let store = stores.namespaces.clone();
    let task = tokio::spawn(async move {
        let mut done: HashSet<String> = HashSet::new();
        let mut wanted: HashSet<String> = HashSet::new();
        let mut delay = FIRST_RETRY;
        let mut scans = 0u32;
        // Scan once the namespaces are listed, not before (an empty store says nothing).
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ready = store.wait_until_ready() => if ready.is_err() { return },
        }
        loop {
            if !leader.is_elected() {
                // Another replica writes; on taking the lead, everything again.
                done.clear();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    leads = leader.leading() => if !leads { return },
                }
            }
            for ns in store.state() {
                let enabled = ns
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(INJECT))
                    .is_some_and(|v| v.trim() == ENABLED);
                if let (true, Some(name)) = (enabled, &ns.metadata.name) {
                    wanted.insert(name.clone());
                }
            }
            let mut failed = false;
            let pending = wanted.iter().any(|ns| !done.contains(ns));
            if pending && !leader.confirm().await {
                // Elected, but the Lease says otherwise: write nothing this round.
                failed = true;
            }
            for ns in wanted
                .iter()
                .filter(|ns| !done.contains(*ns))
                .cloned()
                .collect::<Vec<_>>()
            {
                if failed || !leader.is_elected() {
                    break;
                }
                match apply_trust_anchors(&client, &ns, &ca.trust_bundle_pem()).await {
                    Ok(()) => {
                        tracing::info!(namespace = %ns, configmap = TRUST_ANCHORS_CONFIGMAP,
                            "trust anchors published");
                        done.insert(ns);
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %ns, error = %e, "cannot publish the trust anchors");
                        failed = true;
                    }
                }
            }
            let wait = if failed {
                let d = delay;
                delay = (delay * 2).min(MAX_RETRY);
                d
            } else {
                delay = FIRST_RETRY;
                SCAN
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ns = rx.recv() => match ns {
                    Some(ns) => { wanted.insert(ns); }
                    None => return,
                },
                // A rotation: every namespace gets the new bundle.
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    done.clear();
                }
                _ = tokio::time::sleep(wait) => {
                    scans += 1;
                    if scans % REAPPLY_EVERY == 0 {
                        done.clear();
                    }
                }
                lost = leader.lost() => if !lost { return },
            }
        }
    });
    (namespaces, task)
}
