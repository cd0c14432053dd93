//! The HTTP pieces both directions share, for connections [`crate::detect`] found to
//! speak HTTP/1.x or HTTP/2: serving one connection with hyper ([`server`], closing
//! idle HTTP/2 connections with [`idle`]), the
//! body types ([`body`], with [`replay`] for retries), what changes about a message
//! as it crosses the proxy ([`hop`]: hop-by-hop headers, the mesh hop's version
//! header, the absolute URI sent upstream), the proxy's own answers ([`errors`], and to gRPC callers [`grpc`]) and
//! upgrades and `CONNECT` ([`upgrade`]).
//!
//! A request's path lives with its direction: [`crate::outbound::http`] (route, limit,
//! retries) and [`crate::inbound::http`] (authorization, limits, the application).
//!
//! Between two proxies a request travels inside mesh TLS (ALPN `pillion/1`) in its
//! client's version; with `--mesh-protocol http2` every request shares one HTTP/2
//! connection, an HTTP/1.x one carrying its version in `pillion-orig-proto` so it
//! leaves the far proxy as HTTP/1.x again.

pub(crate) mod body;
pub(crate) mod errors;
pub(crate) mod grpc;
pub(crate) mod hop;
pub(crate) mod idle;
pub(crate) mod replay;
pub(crate) mod server;
pub(crate) mod tee;
pub(crate) mod upgrade;
