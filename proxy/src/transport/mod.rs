//! Plain TCP plumbing under every layer: binding listeners, reading the original
//! destination, tuning sockets, connecting upstream and copying bytes.

pub mod connect;
pub mod forward;
pub mod listen;
pub mod orig_dst;
pub mod sockopt;
