//! The mesh on one machine: pods as Linux network namespaces, each with init and
//! the proxy as its sidecar, the agent in a pod of its own, and the sample workloads
//! — what `pillion up` runs, and what the end-to-end tests build their clusters from.
//!
//! # The world
//!
//! Each local mesh (and each test) builds its own [`World`]. A world starts a *holder* process with
//! `unshare --net --mount --propagation private`: its new network namespace is the
//! world's **node**, and its new mount namespace gets a private tmpfs over `/run`, so
//! the `/run/netns/*` files that `ip netns` creates and the `/run/xtables.lock` that
//! legacy iptables takes exist only inside the world. The node holds a bridge `br0`
//! with 198.18.0.1/24 and 2001:2::1/64.
//!
//! ```text
//!   root namespace (never touched)
//!   └─ holder: `sleep infinity` in new net + mount namespaces  ── the node
//!        br0 198.18.0.1 / 2001:2::1
//!         ├─ v2 ══ eth0  pod "a"  <prefix>-a  198.18.0.2 / 2001:2::2
//!         └─ v3 ══ eth0  pod "b"  <prefix>-b  198.18.0.3 / 2001:2::3
//! ```
//!
//! A [`Pod`] is a named netns inside the world, joined to the bridge by a veth pair,
//! with the next addresses in creation order (`nodad`, so usable at once) and default
//! routes via the bridge. Addresses come only from 198.18.0.0/15 and 2001:2::/48.
//!
//! Every command that touches networking is built by one function (`enter.rs`): it
//! wraps the program in `nsenter --target <holder> --mount --net`, and pod commands
//! add `ip netns exec <netns>`, so nothing the harness runs can reach the root
//! namespace's interfaces, routes or firewall. In-process code (clients and servers
//! on real tokio sockets) runs on a thread that `setns`-es into a pod's netns
//! through `/proc/<holder>/root/run/netns/<netns>` ([`Pod::run`],
//! [`Pod::background`]).
//!
//! # Lifetimes and cleanup
//!
//! Dropping a world (also while a panic unwinds) kills the processes it started, then
//! the holder; with the holder's namespaces go every netns, veth, the bridge and every
//! iptables rule inside. Every started process carries
//! `PILLION_TEST_WORLD=<test pid>-<n>` and is started with `--pdeathsig KILL`; the
//! first world of a test process sweeps ([`marker::sweep`]) processes whose test
//! process is gone, by PID, ours only. Tests run in parallel threads, each with its own
//! world; nothing is global but that sweep.
//!
//! # Pieces
//!
//! - [`World`], [`Pod`], [`Cmd`] / [`Process`], [`Task`]: the cluster and what runs in it;
//! - [`sidecar`]: `pod.install_sidecar(opts)` = init as root, proxy as uid 2580, `/ready`;
//! - [`metrics`]: scrape and query a proxy's `/metrics`; [`http`]: its admin endpoints;
//! - [`apps`]: the sample workloads (echo, hello over HTTP) on dual-stack listeners;
//! - [`bridge`]: a collector outside the world (Jaeger) made reachable inside it;
//! - [`up`]: `pillion up`, the two-pod mesh with live traffic and counters.

pub mod addr;
pub mod apps;
pub mod bridge;
mod enter;
pub mod gateway;
mod holder;
pub mod http;
pub mod marker;
pub mod metrics;
mod netns;
mod pod;
pub mod process;
pub mod sidecar;
pub mod up;
mod world;

pub use netns::Task;
pub use nix::sys::signal::Signal;
pub use pod::Pod;
pub use process::{Cmd, Logs, Process};
pub use sidecar::{Sidecar, SidecarOpts};
pub use world::World;
