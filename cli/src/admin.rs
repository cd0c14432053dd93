//! `pillion proxy-config ADDR` and `pillion log-level ADDR [FILTER]`: a proxy's
//! admin server, asked from where it answers (the pod itself, or a port-forward).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the proxy has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One request to the admin server at `addr`; prints the answer's body and fails
/// unless it is a 2xx.
pub fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> ExitCode {
    match request(addr, method, path, body) {
        Ok((status, text)) if (200..300).contains(&status) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!(
                "pillion: {method} {path} at {addr} answered {status}: {}",
                text.trim_end()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pillion: cannot reach the proxy's admin server at {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The status and body of one HTTP/1.1 request (the connection closes after it).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1.1 answer");
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = (head.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}
