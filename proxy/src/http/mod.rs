//! HTTP-aware proxying: what happens to a connection that [`crate::detect`] found to
//! speak HTTP/1.x or HTTP/2.
//!
//! The layers, top to bottom:
//!
//! - [`outbound`] / [`inbound`]: one request's path (route, rate limit, authorization,
//!   retries, timeouts, header edits), served per connection by [`server`];
//! - [`tables`]: the compiled view ([`outbound_table`], [`inbound_table`]) swapped
//!   whole on every view update, carrying endpoint, balancer, outlier and limiter
//!   state across updates;
//! - [`backend`]: endpoints and backends (peak-EWMA power of two choices, outlier
//!   ejection);
//! - [`upstream`] / [`pool`] / [`connect`]: per-endpoint connections (HTTP/1.1
//!   keep-alive pool, one multiplexed HTTP/2 connection) over plain TCP or mesh TLS;
//! - [`upgrade`]: WebSocket / `CONNECT`, which turn a connection opaque end to end;
//! - [`hop`], [`body`], [`replay`], [`errors`], [`metrics`], [`settings`]: the pieces.
//!
//! Between two proxies a request travels inside mesh TLS (ALPN `pillion/1`) in its
//! client's version; with `--mesh-protocol http2` every request shares one HTTP/2
//! connection, an HTTP/1.x one carrying its version in `pillion-orig-proto` so it
//! leaves the far proxy as HTTP/1.x again.

pub mod backend;
pub mod body;
pub mod connect;
pub mod errors;
pub mod flags;
pub mod hop;
pub mod inbound;
pub mod inbound_table;
pub mod layer;
pub mod metrics;
pub mod outbound;
pub mod outbound_table;
pub mod pool;
pub mod replay;
pub mod server;
pub mod settings;
pub mod tables;
pub mod upgrade;
pub mod upstream;

pub use flags::HttpArgs;
pub use inbound::{InboundHttp, Peer};
pub use layer::HttpLayer;
pub use metrics::HttpMetrics;
pub use settings::HttpSettings;
pub use tables::HttpTables;
