//! Copies bytes both ways between the downstream client and the upstream,
//! propagating half-close and counting bytes per chunk so metrics move during
//! long transfers.

use std::io;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Starting size of the one buffer each direction of a connection reuses.
pub(crate) const BUFFER_SIZE: usize = 16 * 1024;

/// Size the buffer grows to, once, when a read fills it: bulk transfers move
/// about twice as fast with it, while idle and chatty connections stay small.
pub(crate) const BULK_BUFFER_SIZE: usize = 64 * 1024;

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Transferred {
    /// Client to upstream.
    pub sent: u64,
    /// Upstream to client.
    pub received: u64,
}

/// Which way bytes were flowing when forwarding failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Client to upstream.
    ClientToUpstream,
    /// Upstream to client.
    UpstreamToClient,
}

/// Forwarding stopped on an I/O error; carries what had been moved until then.
#[derive(Debug, thiserror::Error)]
#[error("forwarding {flow:?} failed after {} bytes sent and {} received: {source}", transferred.sent, transferred.received)]
pub(crate) struct ForwardError {
    /// The direction that failed.
    pub flow: Flow,
    /// Bytes moved before the failure.
    pub transferred: Transferred,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// Where each direction's byte counts go as chunks are written.
#[derive(Clone, Debug)]
pub(crate) struct ByteCounters {
    /// Incremented by bytes written to the upstream.
    pub sent: Counter,
    /// Incremented by bytes written back to the client.
    pub received: Counter,
}

/// Forwards until both directions have ended.
///
/// When one side finishes sending (EOF), the write half of the other side is
/// shut down and the other direction keeps flowing until it ends too. An I/O
/// error in either direction ends both.
pub(crate) async fn forward<C, U>(
    client: C,
    upstream: U,
    counters: &ByteCounters,
) -> Result<Transferred, ForwardError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let mut sent = 0u64;
    let mut received = 0u64;
    let result = tokio::try_join!(
        async {
            copy_one_way(client_read, upstream_write, &counters.sent, &mut sent)
                .await
                .map_err(|e| (Flow::ClientToUpstream, e))
        },
        async {
            copy_one_way(
                upstream_read,
                client_write,
                &counters.received,
                &mut received,
            )
            .await
            .map_err(|e| (Flow::UpstreamToClient, e))
        },
    );
    let transferred = Transferred { sent, received };
    match result {
        Ok(((), ())) => Ok(transferred),
        Err((flow, source)) => Err(ForwardError {
            flow,
            transferred,
            source,
        }),
    }
}

/// Copies one direction until EOF, then shuts down the writer's side.
async fn copy_one_way<R, W>(
    mut reader: R,
    mut writer: W,
    counter: &Counter,
    total: &mut u64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        writer.write_all(&buf[..n]).await?;
        if n == buf.len() && buf.len() < BULK_BUFFER_SIZE {
            buf.resize(BULK_BUFFER_SIZE, 0);
        }
        let n = n as u64;
        *total += n;
        counter.inc_by(n);
    }
    writer.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    type Forwarding = tokio::task::JoinHandle<Result<Transferred, ForwardError>>;

    /// An app socket and a server socket with a forward running between them, and
    /// its counters.
    async fn forwarding() -> (TcpStream, TcpStream, ByteCounters, Forwarding) {
        let (app, proxy_down) = pair().await;
        let (proxy_up, server) = pair().await;
        let c = counters();
        let task = {
            let c = c.clone();
            tokio::spawn(async move { forward(proxy_down, proxy_up, &c).await })
        };
        (app, server, c, task)
    }

    fn counters() -> ByteCounters {
        ByteCounters {
            sent: Counter::default(),
            received: Counter::default(),
        }
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (mut app, mut server, c, task) = forwarding().await;

        app.write_all(b"hello").await.unwrap();
        app.shutdown().await.unwrap();
        // The server sees the request and then EOF...
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // ...and can still answer after the client's FIN.
        server.write_all(b"world!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        app.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"world!");

        let t = task.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                sent: 5,
                received: 6
            }
        );
        assert_eq!((c.sent.get(), c.received.get()), (5, 6));
    }

    #[tokio::test]
    async fn counters_move_during_a_long_transfer() {
        let (mut app, mut server, c, task) = forwarding().await;
        let chunk = vec![7u8; 256 * 1024];
        app.write_all(&chunk).await.unwrap();
        let mut got = vec![0u8; chunk.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, chunk);
        // The connection is still open, yet the counter already shows the bytes.
        assert_eq!(c.sent.get(), chunk.len() as u64);
        assert!(!task.is_finished());

        drop(app);
        drop(server);
        let t = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(t.sent, chunk.len() as u64);
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions_with_an_error() {
        let (mut app, server, _c, task) = forwarding().await;
        app.write_all(b"ping").await.unwrap();
        // Close the server with unread data and linger 0: the kernel sends RST.
        tokio::time::sleep(Duration::from_millis(50)).await;
        socket2::SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(server);
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.transferred.sent, 4);
        // The client is closed too.
        let mut rest = Vec::new();
        let _ = app.read_to_end(&mut rest).await;
        assert!(rest.is_empty());
    }
}
