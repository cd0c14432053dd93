//! Opens the upstream TCP connection within the connect timeout, tuned like
//! the downstream side.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::sockopt;

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The upstream did not answer within the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The upstream address.
        addr: SocketAddr,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The kernel reported an error (refused, unreachable, ...).
    #[error("connecting to {addr} failed: {source}")]
    Io {
        /// The upstream address.
        addr: SocketAddr,
        /// The kernel's reason.
        #[source]
        source: io::Error,
    },
}

/// Connects to `addr`, giving up after `timeout`, and applies the socket options.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
    };
    sockopt::tune(&stream).map_err(|source| ConnectError::Io { addr, source })?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn connects_and_tunes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = connect(listener.local_addr().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(SockRef::from(&stream).nodelay().unwrap());
    }

    #[tokio::test]
    async fn refused_is_an_io_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let err = connect(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Io { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()));
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out() {
        // A listener with a full accept queue drops further SYNs, so a connect hangs.
        let listener = crate::transport::listen::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        let mut timed_out = false;
        for _ in 0..16 {
            match connect(addr, Duration::from_millis(200)).await {
                Ok(stream) => held.push(stream),
                Err(ConnectError::Timeout { timeout, .. }) => {
                    assert_eq!(timeout, Duration::from_millis(200));
                    timed_out = true;
                    break;
                }
                Err(err) => panic!("unexpected {err}"),
            }
        }
        assert!(
            timed_out,
            "no connect timed out after {} connects",
            held.len()
        );
    }
}
