//! Binds listener sockets with the options the proxy needs (`SO_REUSEADDR`,
//! `IPV6_V6ONLY` so `0.0.0.0` and `[::]` can share a port, a chosen backlog).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// A listener that could not be bound, named by its flag so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The kernel refused the address.
    #[error("cannot bind {flag} address {addr}: {source}")]
    Bind {
        /// The flag that gave the address.
        flag: &'static str,
        /// The address that failed.
        addr: SocketAddr,
        /// The kernel's reason.
        #[source]
        source: io::Error,
    },
    /// Every address of a flag was IPv6 and this network namespace has no IPv6.
    #[error("no address of {flag} could be bound: IPv6 is unavailable here; add an IPv4 address")]
    NothingBound {
        /// The flag whose addresses were all skipped.
        flag: &'static str,
    },
}

/// Binds one listening socket (non-blocking, close-on-exec).
pub(crate) fn bind_std(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The config validates the range; clamp anyway rather than wrap.
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Binds one tokio listener; needs a running tokio runtime.
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, backlog)?)
}

/// Whether a bind failure only means this namespace has no IPv6.
pub(crate) fn ipv6_unavailable(addr: SocketAddr, err: &io::Error) -> bool {
    addr.is_ipv6()
        && matches!(
            err.raw_os_error(),
            Some(code) if code == nix::libc::EADDRNOTAVAIL || code == nix::libc::EAFNOSUPPORT
        )
}

/// Binds every address of one flag. An IPv6 address that fails only because
/// IPv6 is unavailable is skipped with a warning; any other failure is fatal.
pub(crate) fn bind_all(
    flag: &'static str,
    addrs: &[SocketAddr],
    backlog: u32,
) -> Result<Vec<TcpListener>, BindError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        match bind(addr, backlog) {
            Ok(listener) => listeners.push(listener),
            Err(err) if ipv6_unavailable(addr, &err) => {
                tracing::warn!(
                    flag,
                    %addr,
                    error = %err,
                    "IPv6 is unavailable in this network namespace; continuing on IPv4 only"
                );
            }
            Err(source) => return Err(BindError::Bind { flag, addr, source }),
        }
    }
    if listeners.is_empty() {
        return Err(BindError::NothingBound { flag });
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_v4_and_v6_on_the_same_port() {
        let v4 = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let port = v4.local_addr().unwrap().port();
        // With IPV6_V6ONLY the v6 wildcard does not claim the v4 port; skip when
        // this namespace has no IPv6.
        let v6_addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
        match bind(v6_addr, 16) {
            Ok(v6) => assert_eq!(v6.local_addr().unwrap().port(), port),
            Err(err) => assert!(ipv6_unavailable(v6_addr, &err), "{err}"),
        }
    }

    #[tokio::test]
    async fn a_taken_address_names_the_flag() {
        let taken = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_all("--outbound-addrs", &[addr], 16).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--outbound-addrs"), "{msg}");
        assert!(msg.contains(&addr.to_string()), "{msg}");
    }

    #[test]
    fn only_v6_address_errors_count_as_unavailable() {
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let not_avail = io::Error::from_raw_os_error(nix::libc::EADDRNOTAVAIL);
        let no_af = io::Error::from_raw_os_error(nix::libc::EAFNOSUPPORT);
        let in_use = io::Error::from_raw_os_error(nix::libc::EADDRINUSE);
        assert!(ipv6_unavailable(v6, &not_avail));
        assert!(ipv6_unavailable(v6, &no_af));
        assert!(!ipv6_unavailable(v6, &in_use));
        assert!(!ipv6_unavailable(v4, &not_avail));
    }
}
