//! The optional access log: one JSON line per request, to stderr or a file. The
//! request path only moves a plain [`AccessRecord`] into a bounded channel
//! (`try_send`; when full the line is dropped and counted); a dedicated writer thread
//! formats and writes, flushing whenever it runs out of work, so a slow disk or a
//! blocked stderr pipe can never stall traffic or the runtime.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::Method;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ids::TraceId;
use super::metrics::TelemetryMetrics;
use crate::telemetry::metrics::Direction;

/// Where access log lines go (`--access-log off|stderr|PATH`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// No access log.
    #[default]
    Off,
    /// Standard error, interleaved with the proxy's own log.
    Stderr,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

impl FromStr for AccessLogTarget {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<AccessLogTarget, Self::Err> {
        Ok(match s {
            "" | "off" => AccessLogTarget::Off,
            "stderr" => AccessLogTarget::Stderr,
            path => AccessLogTarget::File(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessLogTarget::Off => f.write_str("off"),
            AccessLogTarget::Stderr => f.write_str("stderr"),
            AccessLogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The access log file cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct AccessLogError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// One request, as the HTTP layer saw it.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    /// When the request arrived.
    pub time: SystemTime,
    /// Outbound or inbound.
    pub direction: Direction,
    /// The method.
    pub method: Method,
    /// The path (the query is never logged: it may carry secrets).
    pub path: Option<PathAndQuery>,
    /// The response status; `None` when there was none.
    pub status: Option<u16>,
    /// From request head to the end of the response.
    pub duration: Duration,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// The peer's verified SPIFFE id.
    pub peer_identity: Option<Box<str>>,
    /// The endpoint the request went to.
    pub upstream: Option<SocketAddr>,
    /// The route's name.
    pub route: Option<Box<str>>,
    /// The trace, when the request was sampled.
    pub trace_id: Option<TraceId>,
}

impl AccessRecord {
    /// The JSON object of the line.
    pub fn to_json(&self) -> Value {
        let time = OffsetDateTime::from(self.time)
            .format(&Rfc3339)
            .unwrap_or_default();
        json!({
            "time": time,
            "direction": self.direction.as_str(),
            "method": self.method.as_str(),
            "path": self.path.as_ref().map(PathAndQuery::path),
            "status": self.status,
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "peer_identity": self.peer_identity.as_deref(),
            "upstream": self.upstream.map(|a| a.to_string()),
            "route": self.route.as_deref(),
            "trace_id": self.trace_id.map(|t| t.to_string()),
        })
    }
}

/// The handle requests log through; cheap to clone (one `Arc`, none when off), and
/// a disabled one does nothing.
#[derive(Clone, Debug, Default)]
pub struct AccessLog {
    inner: Option<Arc<LogInner>>,
}

#[derive(Debug)]
struct LogInner {
    tx: SyncSender<AccessRecord>,
    metrics: TelemetryMetrics,
}

impl AccessLog {
    /// An access log that logs nothing.
    pub fn disabled() -> AccessLog {
        AccessLog::default()
    }

    /// Opens `target` and starts its writer thread holding up to `queue` lines.
    pub fn start(
        target: &AccessLogTarget,
        queue: usize,
        metrics: TelemetryMetrics,
    ) -> Result<AccessLog, AccessLogError> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog::disabled()),
            AccessLogTarget::Stderr => Box::new(io::stderr()),
            AccessLogTarget::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        let (tx, rx) = sync_channel(queue.max(1));
        let writer_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("pillion-access-log".into())
            .spawn(move || write_lines(rx, out, &writer_metrics))
            .map_err(|source| AccessLogError {
                path: PathBuf::from(target.to_string()),
                source,
            })?;
        Ok(AccessLog {
            inner: Some(Arc::new(LogInner { tx, metrics })),
        })
    }

    /// Whether lines are written at all (skip building records when not).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues one line without waiting; drops and counts it if the writer is behind.
    pub fn log(&self, record: AccessRecord) {
        let Some(inner) = &self.inner else { return };
        match inner.tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                inner.metrics.access_log_dropped.inc();
            }
        }
    }
}

/// The writer thread: format, write, flush when idle; exits when every handle is gone.
fn write_lines(rx: Receiver<AccessRecord>, out: Box<dyn Write + Send>, metrics: &TelemetryMetrics) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    let mut next = rx.recv().ok();
    while let Some(record) = next {
        line.clear();
        let written = serde_json::to_writer(&mut line, &record.to_json())
            .map_err(io::Error::from)
            .and_then(|()| {
                line.push(b'\n');
                out.write_all(&line)
            });
        match written {
            Ok(()) => {
                metrics.access_log_lines.inc();
            }
            Err(_) => {
                metrics.access_log_dropped.inc();
            }
        }
        next = match rx.try_recv() {
            Ok(record) => Some(record),
            Err(_) => {
                let _ = out.flush();
                rx.recv().ok()
            }
        };
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            direction: Direction::Inbound,
            method: Method::GET,
            path: Some("/orders/7?token=secret".parse().unwrap()),
            status: Some(200),
            duration: Duration::from_micros(1500),
            request_bytes: n,
            response_bytes: 42,
            peer_identity: Some("spiffe://cluster.local/ns/demo/sa/client".into()),
            upstream: Some("127.0.0.1:7000".parse().unwrap()),
            route: Some("orders".into()),
            trace_id: Some(TraceId([0xab; 16])),
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "off".parse::<AccessLogTarget>().unwrap(),
            AccessLogTarget::Off
        );
        assert_eq!(
            "stderr".parse::<AccessLogTarget>().unwrap(),
            AccessLogTarget::Stderr
        );
        assert_eq!(
            "/var/log/a.json".parse::<AccessLogTarget>().unwrap(),
            AccessLogTarget::File("/var/log/a.json".into())
        );
    }

    #[test]
    fn line_has_every_field() {
        let v = record(5).to_json();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/orders/7");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["request_bytes"], 5);
        assert_eq!(v["response_bytes"], 42);
        assert_eq!(
            v["peer_identity"],
            "spiffe://cluster.local/ns/demo/sa/client"
        );
        assert_eq!(v["upstream"], "127.0.0.1:7000");
        assert_eq!(v["route"], "orders");
        assert_eq!(v["trace_id"], "ab".repeat(16));
    }

    #[test]
    fn writes_lines_to_a_file() {
        let dir = std::env::temp_dir().join(format!("pillion-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.json");
        let metrics = TelemetryMetrics::default();
        let log =
            AccessLog::start(&AccessLogTarget::File(path.clone()), 64, metrics.clone()).unwrap();
        assert!(log.is_enabled());
        for n in 0..10 {
            log.log(record(n));
        }
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.access_log_lines.get() < 10 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[9]["request_bytes"], 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = sync_channel(2);
        let metrics = TelemetryMetrics::default();
        let log = AccessLog {
            inner: Some(Arc::new(LogInner {
                tx,
                metrics: metrics.clone(),
            })),
        };
        for n in 0..5 {
            log.log(record(n));
        }
        assert_eq!(metrics.access_log_dropped.get(), 3);
        AccessLog::disabled().log(record(0));
        let err = AccessLog::start(
            &AccessLogTarget::File("/nonexistent/dir/x".into()),
            4,
            metrics,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot open the access log /nonexistent/dir/x"),
            "{err}"
        );
    }
}
