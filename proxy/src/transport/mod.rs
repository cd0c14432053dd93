//! Plain TCP plumbing under both directions: binding listeners ([`listen`]),
//! accepting until the drain starts within a connection budget ([`accept`],
//! [`budget`], [`drain`]), reading the original
//! destination ([`orig_dst`]), tuning sockets ([`sockopt`]), refusing loops
//! ([`loop_guard`]), connecting upstream ([`connect`]), copying bytes ([`forward`],
//! [`relay`]), counting the bytes of connections served as HTTP ([`counted`]) and
//! mutual TLS between proxies ([`tls`]).

pub(crate) mod accept;
pub(crate) mod budget;
pub(crate) mod connect;
pub(crate) mod counted;
pub(crate) mod drain;
pub(crate) mod forward;
pub(crate) mod listen;
pub(crate) mod loop_guard;
pub(crate) mod orig_dst;
pub(crate) mod relay;
pub(crate) mod sockopt;
pub(crate) mod tls;
