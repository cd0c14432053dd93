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
    /// A verified peer the port's allow list does not admit: HTTP may go on (each
    /// request is judged by its route, and answered 403), bytes may not.
    OnlyHttp,
    /// Refused before anything is read.
    Refuse(Denied),
}

/// Decides for a connection to `port` from `peer` (`None` for plaintext).
pub(crate) fn admit(port: PortRule<'_>, peer: Option<&str>) -> Verdict {
    match peer {
        None if port.mode == Mode::Strict => Verdict::Refuse(Denied::Plaintext),
        None => Verdict::Admit,
        Some(identity) if port.admits(identity) => Verdict::Admit,
        Some(_) => Verdict::OnlyHttp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use crate::telemetry::metrics::http::HttpMetrics;

    #[test]
    fn mode_and_allow_list_decide() {
        let view: pillion_api::view::View = serde_json::from_str(
            r#"{"version": 1, "identity": "spiffe://cluster.local/ns/demo/sa/server",
              "inbound": {"default_mode": "permissive", "ports": {
                "7000": {"mode": "strict", "allow": ["spiffe://cluster.local/ns/demo/*"]}}}}"#,
        )
        .unwrap();
        let state = State::compile(
            &view,
            &State::default(),
            &Default::default(),
            &HttpMetrics::default(),
            std::time::Instant::now(),
        );
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
}
