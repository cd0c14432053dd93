#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! `pillion`, the command users run: `pillion up` starts the mesh on this machine
//! ([`local`]: pods as network namespaces, the agent on its embedded default, live
//! traffic and counters); `pillion init|proxy|agent|inject …` runs the programs of
//! the mesh ([`programs`]), which is also how `pillion up` starts them in its pods;
//! `pillion ca init` makes the mesh's root and issuer ([`ca`]); `pillion validate`
//! checks the agent's source offline ([`validate`]); `pillion proxy-config` and
//! `pillion log-level` ask a proxy's admin server ([`admin`]).

pub mod admin;
pub mod ca;
pub mod local;
pub mod programs;
pub mod validate;
