//! A test OTLP collector that speaks the real wire formats: OTLP/gRPC through the
//! `TraceService` server that `opentelemetry-proto` generates for tonic, and OTLP
//! HTTP/protobuf (`POST /v1/traces`) through hyper with prost decoding. Every span
//! it receives is kept (with its resource) for assertions.
//!
//! It runs on this process's loopback on its own thread and runtime, or wherever a
//! [`Spawner`] puts it (a pod of a world, the way a cluster's collector is a pod), so
//! [`OtlpReceiver::stop`] really ends every connection (a collector going down) and
//! [`OtlpReceiver::start_again`] binds the same ports anew (the collector coming back).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, Span};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The servers' whole life, handed to a [`Spawner`] to run.
pub type ServeBody = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<()>>>> + Send>;

/// Runs a [`ServeBody`] somewhere (e.g. in a pod) and answers a handle that stops it
/// when dropped.
pub type Spawner = Arc<dyn Fn(ServeBody) -> Result<Box<dyn std::any::Any + Send>> + Send + Sync>;

/// Which transport delivered a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP HTTP/protobuf.
    Http,
}

/// One received span with the resource it came under.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The span as decoded.
    pub span: Span,
    /// The resource attributes of its `ResourceSpans`.
    pub resource: Vec<KeyValue>,
    /// The transport it came over.
    pub transport: Transport,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

impl ReceivedSpan {
    /// The trace id as 32 hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id as 16 hex digits.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id as 16 hex digits, or `None` for a root span.
    pub fn parent_span_id(&self) -> Option<String> {
        (!self.span.parent_span_id.is_empty()).then(|| hex(&self.span.parent_span_id))
    }

    /// Whether this is a SERVER span.
    pub fn is_server(&self) -> bool {
        self.span.kind == span::SpanKind::Server as i32
    }

    /// Whether this is a CLIENT span.
    pub fn is_client(&self) -> bool {
        self.span.kind == span::SpanKind::Client as i32
    }

    /// A string attribute of the span.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match find(&self.span.attributes, key) {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute of the span.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match find(&self.span.attributes, key) {
            Some(any_value::Value::IntValue(v)) => Some(*v),
            _ => None,
        }
    }

    /// A string attribute of the span's resource (e.g. `service.name`).
    pub fn resource_attr(&self, key: &str) -> Option<&str> {
        match find(&self.resource, key) {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether the span's status is Error.
    pub fn is_error(&self) -> bool {
        self.span.status.as_ref().is_some_and(|s| {
            s.code == opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32
        })
    }
}

/// What the collector has received, shared by its servers and the test.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    inner: Arc<Mutex<CollectedInner>>,
}

#[derive(Debug, Default)]
struct CollectedInner {
    spans: Vec<ReceivedSpan>,
    requests: HashMap<&'static str, u64>,
}

impl Collected {
    fn lock(&self) -> MutexGuard<'_, CollectedInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, req: ExportTraceServiceRequest, transport: Transport) {
        let mut inner = self.lock();
        let key = match transport {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        };
        *inner.requests.entry(key).or_default() += 1;
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    inner.spans.push(ReceivedSpan {
                        span,
                        resource: resource.clone(),
                        transport,
                    });
                }
            }
        }
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// How many spans so far.
    pub fn len(&self) -> usize {
        self.lock().spans.len()
    }

    /// Whether nothing has arrived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Export requests received over `transport`.
    pub fn requests(&self, transport: Transport) -> u64 {
        let key = match transport {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        };
        self.lock().requests.get(key).copied().unwrap_or(0)
    }

    /// Forgets everything received so far.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.spans.clear();
        inner.requests.clear();
    }

    /// Polls until `check` holds for the spans so far; the spans, or an error naming
    /// `what` after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if check(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{what}: not seen within {timeout:?}; {} span(s) received",
                    spans.len()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The gRPC side: tonic's generated `TraceService`.
struct GrpcService(Collected);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner(), Transport::Grpc);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The HTTP/protobuf side: `POST /v1/traces` with a protobuf body.
async fn http_export(
    collected: Collected,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(resp)
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return reply(StatusCode::NOT_FOUND, Bytes::new());
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, Bytes::new()),
    };
    match ExportTraceServiceRequest::decode(body) {
        Ok(decoded) => {
            collected.add(decoded, Transport::Http);
            reply(
                StatusCode::OK,
                ExportTraceServiceResponse::default().encode_to_vec().into(),
            )
        }
        Err(_) => reply(StatusCode::BAD_REQUEST, Bytes::new()),
    }
}

/// Serves both transports on bound listeners until dropped.
async fn serve(grpc: TcpListener, http: TcpListener, collected: Collected) -> Result<()> {
    let grpc_server = tonic::transport::Server::builder().serve_with_incoming(
        TraceServiceServer::new(GrpcService(collected.clone())),
        tonic::transport::server::TcpIncoming::from(grpc),
    );
    let http_server = async move {
        loop {
            let (stream, _) = http.accept().await?;
            let collected = collected.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| http_export(collected.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    tokio::select! {
        r = grpc_server => r.context("the gRPC server stopped"),
        r = http_server => r,
    }
}

/// Binds both listeners (SO_REUSEADDR, so a restart can take the same ports).
async fn bind(ip: IpAddr, grpc_port: u16, http_port: u16) -> Result<(TcpListener, TcpListener)> {
    let grpc = TcpListener::bind(SocketAddr::new(ip, grpc_port))
        .await
        .with_context(|| format!("binding the OTLP/gRPC port {grpc_port}"))?;
    let http = TcpListener::bind(SocketAddr::new(ip, http_port))
        .await
        .with_context(|| format!("binding the OTLP/HTTP port {http_port}"))?;
    Ok((grpc, http))
}

/// Where a receiver runs.
#[derive(Clone)]
enum Place {
    /// Bound on `ip` wherever the spawner runs it.
    Elsewhere {
        ip: IpAddr,
        spawner: Spawner,
    },
    Loopback,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Elsewhere { ip, .. } => write!(f, "Elsewhere({ip})"),
            Place::Loopback => f.write_str("Loopback"),
        }
    }
}

/// A running (or stopped) collector.
#[derive(Debug)]
pub struct OtlpReceiver {
    place: Place,
    grpc: SocketAddr,
    http: SocketAddr,
    collected: Collected,
    running: Option<Running>,
}

/// The running servers; held only to be dropped (which stops them).
enum Running {
    Elsewhere {
        _task: Box<dyn std::any::Any + Send>,
    },
    Loopback {
        _task: ThreadTask,
    },
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Running")
    }
}

/// A server thread with its own runtime; dropping it ends the runtime and with it
/// every connection.
#[derive(Debug)]
pub struct ThreadTask {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ThreadTask {
    /// Runs `body()` on a thread `name` with its own current-thread runtime until it
    /// ends or the task is dropped.
    pub fn spawn<F, Fut>(name: &str, body: F) -> Result<ThreadTask>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
    {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    tokio::select! {
                        _ = body() => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .with_context(|| format!("spawning the {name} thread"))?;
        Ok(ThreadTask {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ThreadTask {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long a start may take to bind.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

impl OtlpReceiver {
    /// Starts a collector through `spawner`, listening on all addresses at the ports
    /// of `grpc` and `http`, which are where clients reach it.
    pub fn start_with(
        spawner: Spawner,
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> Result<OtlpReceiver> {
        let mut r = OtlpReceiver {
            place: Place::Elsewhere {
                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                spawner,
            },
            grpc,
            http,
            collected: Collected::default(),
            running: None,
        };
        r.start_again()?;
        Ok(r)
    }

    /// Starts a collector on this process's 127.0.0.1, on free ports.
    pub fn start_loopback() -> Result<OtlpReceiver> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut r = OtlpReceiver {
            place: Place::Loopback,
            grpc: SocketAddr::new(lo, 0),
            http: SocketAddr::new(lo, 0),
            collected: Collected::default(),
            running: None,
        };
        r.start_again()?;
        Ok(r)
    }

    /// (Re)starts the servers on the same ports; a no-op while running.
    pub fn start_again(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(SocketAddr, SocketAddr)>>();
        let collected = self.collected.clone();
        let (grpc_port, http_port) = (self.grpc.port(), self.http.port());
        let ip = match &self.place {
            Place::Elsewhere { ip, .. } => *ip,
            Place::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let body = move || async move {
            let (grpc, http) = match bind(ip, grpc_port, http_port).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let addrs = (grpc.local_addr()?, http.local_addr()?);
            let _ = ready_tx.send(Ok(addrs));
            serve(grpc, http, collected).await
        };
        let running = match &self.place {
            Place::Elsewhere { spawner, .. } => Running::Elsewhere {
                _task: spawner(Box::new(move || Box::pin(body())))?,
            },
            Place::Loopback => Running::Loopback {
                _task: ThreadTask::spawn("otlp-receiver", body)?,
            },
        };
        let (grpc, http) = ready_rx
            .recv_timeout(BIND_TIMEOUT)
            .map_err(|_| anyhow!("the OTLP receiver did not bind within {BIND_TIMEOUT:?}"))??;
        if let Place::Loopback = self.place {
            self.grpc = grpc;
            self.http = http;
        }
        self.running = Some(running);
        Ok(())
    }

    /// Stops the servers and drops every connection: the collector is down.
    pub fn stop(&mut self) {
        self.running = None;
    }

    /// Whether the servers are up.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The HTTP/protobuf address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// `--otlp-endpoint` for gRPC: `http://ip:port`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `--otlp-endpoint` for HTTP/protobuf: `http://ip:port`.
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// What has been received (shared; stays valid across stop and start).
    pub fn collected(&self) -> &Collected {
        &self.collected
    }
}
