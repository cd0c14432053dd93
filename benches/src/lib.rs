#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! `pillion-benches`: Pillion side by side with a direct connection, an nginx pair and
//! an HAProxy pair, all in one run on the same client and server, in private network
//! namespaces built with the `pillion-tests` harness.
//!
//! Run `sudo cargo run --release -p pillion-benches -- [--smoke] [--out DIR]`. The
//! binary is also the multicall program the pods run (`init`, `proxy`, `agent`).
//!
//! - [`topology`]: the pods, servers and proxy pairs;
//! - [`load`]: the load generator (closed and open loop, HTTP/1.1, h2c, connections,
//!   bulk);
//! - [`measure`]: runs every figure for every row; [`flood`]: the flood figure
//!   (`--flood`) instead; [`discovery`]: the discovery figure (`--discovery`) instead;
//!   [`control_plane`]: the agent alone against simulated proxies (`--control-plane`);
//!   [`soak`]: the mesh under load while its parts fail and come back (`--soak`);
//!   [`cache`]: hits against misses of the response cache (`--cache`);
//!   [`gateway`]: HTTPS at the edge, Pillion's gateway against nginx (`--gateway`);
//! - [`report`]: markdown and JSON, ratios.

pub mod bench;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod control_plane;
pub mod discovery;
pub mod figures;
pub mod flood;
pub mod gateway;
pub mod install;
pub mod jwt;
pub mod kube_translate;
pub mod load;
pub mod machine;
pub mod measure;
pub mod pin;
pub mod plan;
pub mod procstat;
pub mod report;
pub mod server;
pub mod soak;
pub mod stats;
pub mod template;
pub mod topology;
pub mod workdir;
