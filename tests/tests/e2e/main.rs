//! The end-to-end tests: pods as real network namespaces in a private world, real iptables, the real agent, init and proxy, real TLS and HTTP clients; one test binary (`common` holds what several modules use).
#![allow(clippy::unwrap_used)] // Tests: a panic with its reason is the report.

mod aggregate;
mod breaker;
mod bypass;
mod cache;
mod common;
mod discovery;
mod drain;
mod edges;
mod faults;
mod first_word;
mod flags;
mod floods;
mod gateway;
mod gateway_clients;
mod h2_edges;
mod harness;
mod http_mesh;
mod init_rules;
mod introspection;
mod jwt;
mod loopback;
mod mesh_agent;
mod mesh_ha;
mod mesh_rotation;
mod mesh_tls;
mod mesh_trust;
mod mirror;
mod telemetry_mesh;
mod telemetry_up;
mod telemetry_world;
mod transfer;
mod transform;
