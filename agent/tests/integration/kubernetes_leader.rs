//! Two agent replicas against one (fake) API server: one Lease, one writer. The
//! replica holding the Lease writes the webhook's caBundle and the trust-anchor
//! ConfigMaps; the other writes nothing until it takes the Lease, when its holder
//! stops (released at once) or stops renewing (taken once it runs out). Each replica
//! has a CA of its own here, so every write says who made it.

use crate::kubernetes_fake::*;
use http::Method;
use pillion_agent::kubernetes::leader::{confirm, field_manager, LeaderSpec};
use pillion_agent::kubernetes::{ClientSpec, KubernetesSpec};
use pillion_agent::{Agent, AgentConfig, RunningAgent, SourceSpec};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const NAMESPACE: &str = "pillion";

fn spec(identity: &str) -> LeaderSpec {
    LeaderSpec {
        lease_seconds: 3,
        grace_seconds: 1,
        ..LeaderSpec::new(NAMESPACE, identity)
    }
}

async fn world() -> (FakeApiServer, Leases) {
    let mut lists = empty_lists();
    lists.insert(
        "namespaces",
        vec![json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "resourceVersion": "10",
                         "annotations": {"pillion.io/inject": "enabled"}}})],
    );
    let leases = Leases::default();
    let fake = FakeApiServer::start(cluster_sharing(lists, BTreeMap::new(), leases.clone())).await;
    (fake, leases)
}

async fn replica(fake: &FakeApiServer, identity: &str) -> RunningAgent {
    let mut config = AgentConfig::new(SourceSpec::Embedded);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let mut kube = KubernetesSpec::new(ClientSpec::Config(Box::new(fake.kube_config())));
    kube.leader = spec(identity);
    config.kubernetes = Some(kube);
    Agent::start(config).await.unwrap()
}

/// The trust bundles written into ConfigMaps so far, in order.
fn configmap_writes(fake: &FakeApiServer) -> Vec<String> {
    (fake.seen().into_iter())
        .filter(|s| {
            s.method == Method::PATCH && s.path().ends_with("/configmaps/pillion-trust-anchors")
        })
        .filter_map(|s| s.json()["data"]["ca.pem"].as_str().map(str::to_string))
        .collect()
}

async fn holder_becomes(leases: &Leases, want: impl Fn(Option<&str>) -> bool) -> Option<String> {
    for _ in 0..300 {
        let holder = leases.holder(NAMESPACE, "pillion-agent");
        if want(holder.as_deref()) {
            return holder;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the Lease never got the holder wanted");
}

async fn written_by(fake: &FakeApiServer, agent: &RunningAgent) {
    for _ in 0..300 {
        if configmap_writes(fake)
            .iter()
            .any(|b| b == agent.trust_anchor_pem())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no ConfigMap write from the leader; saw {:?}",
        configmap_writes(fake).len()
    );
}

#[tokio::test]
async fn one_replica_writes_and_hands_over_when_it_stops() {
    let (fake, leases) = world().await;
    let mut replicas = BTreeMap::from([
        ("agent-a", replica(&fake, "agent-a").await),
        ("agent-b", replica(&fake, "agent-b").await),
    ]);
    let first = holder_becomes(&leases, |h| h.is_some()).await.unwrap();
    let second = if first == "agent-a" {
        "agent-b"
    } else {
        "agent-a"
    };
    written_by(&fake, &replicas[first.as_str()]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other_bundle = replicas[second].trust_anchor_pem().to_string();
    assert!(
        !configmap_writes(&fake).contains(&other_bundle),
        "the replica without the Lease wrote"
    );
    let webhook_patches = |fake: &FakeApiServer| {
        (fake.seen().iter())
            .filter(|s| s.method == Method::PATCH && s.path().ends_with("/pillion-injector"))
            .count()
    };
    assert_eq!(
        webhook_patches(&fake),
        1,
        "one writer patched the webhook once"
    );

    // The leader stops: it releases the Lease and the other takes over and writes.
    replicas.remove(first.as_str()).unwrap().shutdown().await;
    holder_becomes(&leases, |h| h == Some(second)).await;
    written_by(&fake, &replicas[second]).await;
    // The webhook and the ConfigMaps are written by two tasks of the new leader.
    for _ in 0..300 {
        if webhook_patches(&fake) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(webhook_patches(&fake), 2, "the new leader patched it once");
    for (_, agent) in replicas {
        agent.shutdown().await;
    }
}

#[tokio::test]
async fn a_leader_that_cannot_renew_loses_the_lease_and_its_right_to_write() {
    let (fake, leases) = world().await;
    let a = replica(&fake, "agent-a").await;
    let b = replica(&fake, "agent-b").await;
    let first = holder_becomes(&leases, |h| h.is_some()).await.unwrap();
    let second = if first == "agent-a" {
        "agent-b"
    } else {
        "agent-a"
    };
    let client = kube::Client::try_from(fake.kube_config()).unwrap();
    assert!(confirm(&client, &spec(&first)).await);
    assert!(!confirm(&client, &spec(second)).await);

    // The leader's Lease writes fail from now on: it cannot renew, its Lease runs
    // out, the other replica takes it, and the Lease no longer confirms the first.
    leases.block(&field_manager(&first));
    holder_becomes(&leases, |h| h == Some(second)).await;
    assert!(!confirm(&client, &spec(&first)).await);
    assert!(confirm(&client, &spec(second)).await);
    let new_leader = if second == "agent-a" { &a } else { &b };
    written_by(&fake, new_leader).await;
    a.shutdown().await;
    b.shutdown().await;
}
