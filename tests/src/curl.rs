//! What `curl -sS -i` printed, read back: the status line, the headers and the body
//! of the last answer, and curl's exit code (0 status when no answer came).

use std::collections::HashMap;
use std::process::Output;

use pillion::local::Pod;

use crate::http_mesh::VIP;

/// One answer as curl showed it.
#[derive(Debug)]
pub struct Seen {
    /// curl's exit code (non-zero: no usable answer, e.g. a failed handshake).
    pub exit: i32,
    /// The status line's version (`HTTP/2`, `HTTP/1.1`).
    pub version: String,
    /// The status; 0 when there was none.
    pub status: u16,
    /// Headers by lowercase name (the last of repeated ones).
    pub headers: HashMap<String, String>,
    /// The body as text.
    pub body: String,
}

impl Seen {
    /// The header's value, or empty.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// Reads what `curl -i` wrote.
    pub fn of(out: &Output) -> Seen {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let first: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Seen {
            exit: out.status.code().unwrap_or(-1),
            version: first.first().copied().unwrap_or_default().to_string(),
            status: first.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            headers,
            body: body.to_string(),
        }
    }
}

/// `curl -sS -i` from `pod` to the test service's `path`, with more flags (`-H`…).
pub fn to_service(pod: &Pod, path: &str, flags: &[&str]) -> Seen {
    let url = format!("http://{VIP}{path}");
    let mut args = vec!["curl", "-sS", "-i", "--max-time", "10"];
    args.extend_from_slice(flags);
    args.push(&url);
    let out = pod.exec(&args).expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {path}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Seen::of(&out)
}
