//! Whether an inbound connection may go on, decided once its peer is known (a
//! verified SPIFFE id, or none for plaintext) and before its protocol is: the port's
//! mode and allow list, from the state the connection arrived with. Pure, like the
//! per-request checks in [`crate::policy::authz`].

use pillion_api::view::Mode;

use crate::state::inbound::PortRule;
use crate::telemetry::metrics::mesh::Denied;

/// What the port's policy says about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It may go on, as HTTP or as bytes.
    Admit,
    /// A peer the port's allow list (or one of its routes') does not admit: HTTP
    /// may go on (each request is judged by its route, and answered 403), bytes
    /// may not.
    OnlyHttp,
    /// Refused before anything is read.
    Refuse(Denied),
}

/// Decides for a connection to `port` from `peer` (`None` for plaintext).
pub(crate) fn admit(port: PortRule<'_>, peer: Option<&str>) -> Verdict {
    match peer {
        None if port.mode == Mode::Strict => Verdict::Refuse(Denied::Plaintext),
        Some(identity) if !port.admits(identity) => Verdict::OnlyHttp,
        // Some route would refuse this caller: bytes no route judges may not pass
        // (asked only where bytes can pass at all).
        _ if !port.fails_closed() && !port.every_route_admits(peer) => Verdict::OnlyHttp,
        _ => Verdict::Admit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use crate::telemetry::metrics::http::HttpMetrics;

    fn compile(view: &pillion_api::view::View) -> State {
        State::compile(
            view,
            &Default::default(),
            &State::default(),
            &Default::default(),
            &HttpMetrics::default(),
            std::time::Instant::now(),
        )
    }

    #[test]
    fn mode_and_allow_list_decide() {
        let view: pillion_api::view::View = serde_json::from_str(
            r#"{"version": 1, "identity": "spiffe://cluster.local/ns/demo/sa/server",
              "inbound": {"default_mode": "permissive", "ports": {
                "7000": {"mode": "strict", "allow": ["spiffe://cluster.local/ns/demo/*"]}}}}"#,
        )
        .unwrap();
        let state = compile(&view);
        let strict = state.inbound().rule(7000);
        let open = state.inbound().rule(8080);
        let demo = "spiffe://cluster.local/ns/demo/sa/client";
        let other = "spiffe://cluster.local/ns/other/sa/client";
        assert_eq!(admit(strict, None), Verdict::Refuse(Denied::Plaintext));
        assert_eq!(admit(strict, Some(demo)), Verdict::Admit);
        assert_eq!(admit(strict, Some(other)), Verdict::OnlyHttp);
        assert_eq!(admit(open, None), Verdict::Admit);
        assert_eq!(admit(open, Some(other)), Verdict::Admit);
    }

    #[test]
    fn bytes_pass_only_where_every_route_would_admit_the_caller() {
        // An opaque port (no HTTP served) whose one route admits only ops: a relay
        // must not let in whom that route would refuse.
        let view: pillion_api::view::View = serde_json::from_str(
            r#"{"version": 1, "identity": "spiffe://cluster.local/ns/demo/sa/server",
              "services": [{"name": "db", "namespace": "demo", "ports": [
                 {"port": 7000, "protocol": "opaque"}]}],
              "inbound": {"default_mode": "permissive", "ports": {"7000": {"mode": "permissive",
                "server": {"routes": [{"name": "admin", "matches": [{"path": {"prefix": "/admin"}}],
                  "allow": ["spiffe://cluster.local/ns/ops/*"]}]}}}}}"#,
        )
        .unwrap();
        let state = compile(&view);
        let port = state.inbound().rule(7000);
        assert!(port.opaque);
        let ops = "spiffe://cluster.local/ns/ops/sa/tool";
        let demo = "spiffe://cluster.local/ns/demo/sa/client";
        assert_eq!(admit(port, Some(ops)), Verdict::Admit);
        assert_eq!(admit(port, Some(demo)), Verdict::OnlyHttp);
        assert_eq!(admit(port, None), Verdict::OnlyHttp);
    }
}
