//! Reads where a redirected connection was originally going (`SO_ORIGINAL_DST`,
//! `IP6T_SO_ORIGINAL_DST`), behind a trait so tests and embedders can supply it.

use std::io;
use std::net::SocketAddr;

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt, SockaddrIn, SockaddrIn6};
use tokio::net::TcpStream;

/// Finds the original destination of an accepted connection.
pub trait OrigDstLookup: Send + Sync + 'static {
    /// `Ok(None)` means the kernel has no NAT record: nobody redirected the
    /// connection (someone connected to the listener directly).
    fn original_dst(&self, stream: &TcpStream) -> io::Result<Option<SocketAddr>>;
}

/// The real lookup: asks netfilter's conntrack through `getsockopt`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOrigDst;

/// A lookup that answers one fixed address, for tests and for running the
/// proxy where no redirect rules exist.
#[derive(Clone, Copy, Debug)]
pub struct StaticOrigDst(pub SocketAddr);

impl OrigDstLookup for KernelOrigDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
        let local = stream.local_addr()?;
        let result = if local.is_ipv4() {
            getsockopt(stream, sockopt::OriginalDst)
                .map(|raw| SocketAddr::from(SockaddrIn::from(raw)))
        } else {
            getsockopt(stream, sockopt::Ip6tOriginalDst)
                .map(|raw| SocketAddr::from(SockaddrIn6::from(raw)))
        };
        match result {
            Ok(addr) => Ok(Some(addr)),
            // No conntrack entry (or conntrack not loaded): not redirected.
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(io::Error::from(errno)),
        }
    }
}

impl OrigDstLookup for StaticOrigDst {
    fn original_dst(&self, _stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
        Ok(Some(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_direct_connection_reports_no_redirect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // With conntrack loaded the original tuple is the listener itself;
        // without it the kernel has no record. Either way: not redirected.
        match KernelOrigDst.original_dst(&accepted).unwrap() {
            None => {}
            Some(dst) => assert_eq!(dst, addr),
        }
    }

    #[tokio::test]
    async fn static_lookup_answers_its_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let want: SocketAddr = "198.18.0.9:80".parse().unwrap();
        assert_eq!(
            StaticOrigDst(want).original_dst(&accepted).unwrap(),
            Some(want)
        );
    }
}
