//! `probe <addr> <message>`: a tiny blocking TCP client for tests that need a client
//! *process* (for instance one running as the proxy's uid): connects, sends the
//! message, half-closes, prints whatever comes back.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the probe with `args` (program name first); exit 0 on a full exchange, 1 on
/// a network error, 2 on bad arguments.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let args: Vec<String> = args
        .into_iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let [addr, message] = args.as_slice() else {
        eprintln!("usage: probe <ip:port> <message>");
        return ExitCode::from(2);
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        eprintln!("probe: bad address {addr:?}");
        return ExitCode::from(2);
    };
    match exchange(addr, message.as_bytes()) {
        Ok(reply) => {
            print!("{}", String::from_utf8_lossy(&reply));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("probe: {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

fn exchange(addr: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(message)?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(reply)
}
