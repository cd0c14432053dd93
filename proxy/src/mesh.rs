//! What the stacks need when a control plane is configured: the mesh TLS (over the
//! certificate store the control plane fills) and the views it keeps current.
//! Without it the proxy is the plain L4 proxy: everything passes through.

use std::time::Duration;

use crate::tls::MeshTls;
use crate::view::Views;

/// Time a mesh TLS handshake may take, either direction.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The mesh side of the proxy: mutual TLS and the agent's view.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// Client and server TLS configs over the proxy's certificate store.
    pub tls: MeshTls,
    /// The newest view from the agent.
    pub views: Views,
}
