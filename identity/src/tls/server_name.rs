//! Carrying the expected peer identity in the TLS `ServerName`.
//!
//! One `ClientConfig` serves every outbound mesh connection, so the identity the
//! server must prove travels with each connection, in its server name:
//! `spiffe://<td>/ns/<ns>/sa/<sa>` becomes the DNS name `<sa'>.<ns>.sa.<td>`, where
//! `<sa'>` is the service account with `.` written as `_` (which no Kubernetes name
//! contains, so the mapping is reversible). The verifier decodes the name and compares
//! it with the server certificate's URI SAN; DNS names play no other part. SNI is
//! switched off for mesh connections, so the name never appears on the wire.

use rustls::pki_types::ServerName;

use super::error::{PeerRejected, TlsError};
use crate::spiffe::SpiffeId;

/// Label that separates namespace and trust domain in an encoded name.
const MARKER: &str = "sa";

/// The server name under which to connect to a peer that must prove `id`.
///
/// Fails only when the encoded name breaks DNS limits (a service account longer
/// than 63 bytes, or more than 253 bytes in all).
pub fn server_name_for(id: &SpiffeId) -> Result<ServerName<'static>, TlsError> {
    let sa = id.service_account().replace('.', "_");
    let name = format!("{sa}.{}.{MARKER}.{}", id.namespace(), id.trust_domain());
    ServerName::try_from(name).map_err(|_| TlsError::UnencodableId {
        id: id.clone(),
        reason: "the encoded name exceeds DNS limits (63-byte labels, 253 bytes in all)",
    })
}

/// The identity a server name produced by `server_name_for` stands for.
pub(crate) fn id_from_server_name(name: &ServerName<'_>) -> Result<SpiffeId, PeerRejected> {
    let text = match name {
        ServerName::DnsName(dns) => dns.as_ref(),
        other => return Err(PeerRejected::BadServerName(format!("{other:?}"))),
    };
    let bad = || PeerRejected::BadServerName(text.to_string());
    let mut labels = text.splitn(4, '.');
    let (Some(sa), Some(ns), Some(MARKER), Some(td)) =
        (labels.next(), labels.next(), labels.next(), labels.next())
    else {
        return Err(bad());
    };
    let id = SpiffeId::new(td, ns, &sa.replace('_', ".")).map_err(|_| bad())?;
    // Only names this module produced are accepted, byte for byte.
    match server_name_for(&id) {
        Ok(ServerName::DnsName(again)) if again.as_ref() == text => Ok(id),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "spiffe://cluster.local/ns/demo/sa/client",
            "spiffe://cluster.local/ns/sa/sa/sa",
            "spiffe://my_td.example/ns/a-b/sa/web.frontend.v2",
        ] {
            let id: SpiffeId = s.parse().unwrap();
            let name = server_name_for(&id).unwrap();
            assert_eq!(id_from_server_name(&name).unwrap(), id, "{s}");
        }
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/web.frontend"
            .parse()
            .unwrap();
        assert_eq!(
            server_name_for(&id).unwrap().to_str(),
            "web_frontend.demo.sa.cluster.local"
        );
    }

    #[test]
    fn rejects_names_it_did_not_make() {
        for s in [
            "example.com",
            "a.b.c.d",
            "Client.demo.sa.cluster.local",
            "client.demo.sa",
            "a..b.demo.sa.cluster.local",
        ] {
            let name = ServerName::try_from(s).map(|n| n.to_owned());
            if let Ok(name) = name {
                assert!(id_from_server_name(&name).is_err(), "{s}");
            }
        }
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        assert!(id_from_server_name(&ip).is_err());
    }

    #[test]
    fn too_long_is_an_error() {
        let sa = format!("{}.{}", "a".repeat(40), "b".repeat(40));
        let id = SpiffeId::new("cluster.local", "demo", &sa).unwrap();
        assert!(matches!(
            server_name_for(&id),
            Err(TlsError::UnencodableId { .. })
        ));
    }
}
