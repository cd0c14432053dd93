//! Entry point of the identity crate's fuzz target (`fuzz/fuzz_targets/`), not an
//! API: a workload's CSR through the CA's whole check and signing path, as the agent
//! runs it for `POST /v1/certificates`. It panics only when an invariant breaks; the
//! replay test below runs every committed corpus file through it on stable.

use std::sync::OnceLock;
use std::time::Duration;

use crate::ca::Ca;
use crate::spiffe::SpiffeId;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::generate("cluster.local").expect("a test CA generates"))
}

fn expected() -> &'static SpiffeId {
    static ID: OnceLock<SpiffeId> = OnceLock::new();
    ID.get_or_init(|| SpiffeId::new("cluster.local", "demo", "client").expect("a valid id"))
}

/// A CSR for `spiffe://cluster.local/ns/demo/sa/client`. Input: one mode byte, then
/// either PEM text (mode 0) or the DER of a request (any other mode), which is
/// wrapped in a `CERTIFICATE REQUEST` block so the fuzzer reaches the DER parser
/// directly. A CSR the CA signs proves the expected identity: it asked for it or
/// for none.
pub fn csr_check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", rest.to_vec()))
    };
    let Ok(issued) = ca().sign_csr(&text, expected(), Duration::from_secs(3600)) else {
        return;
    };
    let chain = pem::parse_many(&issued.chain_pem).expect("an issued chain is PEM");
    let leaf = chain.first().expect("an issued chain has a leaf");
    let id = crate::cert_info::id_of_der(leaf.contents()).expect("an issued leaf has an id");
    assert_eq!(&id, expected(), "issued for another identity");
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/csr_check/`), so a crash the
    //! fuzzer once found stays fixed on stable `cargo test`.

    #[test]
    fn replay_csr_check() {
        pillion_api::fuzzing::replay_corpus("csr_check", super::csr_check);
    }
}
