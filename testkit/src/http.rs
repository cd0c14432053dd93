//! HTTP test applications, clients and load loops: a hyper server (HTTP/1.1 and
//! HTTP/2, with upgrades) around any async handler, counting connections and
//! requests; keep-alive clients; one request read into an [`Answer`]; and `n`
//! requests from a number of concurrent tasks.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The body every test application answers with.
pub type AppBody = BoxBody<Bytes, Infallible>;

/// A test application's request handler.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<AppBody>> + Send>>
        + Send
        + Sync,
>;

/// A keep-alive client of the kind tests use.
pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// Makes a handler from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<AppBody>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// A response with a text body.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// An application that answers 200 with its `name` as body and `x-app`, after `delay`.
pub fn named(name: &'static str, delay: Duration) -> Handler {
    handler(move |_req| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut r = text(200, name);
        r.headers_mut()
            .insert("x-app", HeaderValue::from_static(name));
        r
    })
}

/// What a test application has seen.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Requests handled.
    pub requests: AtomicUsize,
}

/// Serves `listener` with `handler` (HTTP/1.1 or HTTP/2 by what the client speaks,
/// upgrades allowed) until the task is dropped, counting into `counters`.
pub async fn serve(listener: TcpListener, handler: Handler, counters: Arc<Counters>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        counters.connections.fetch_add(1, Ordering::SeqCst);
        let handler = Arc::clone(&handler);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                counters.requests.fetch_add(1, Ordering::SeqCst);
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// A running test application; stops when dropped.
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    /// Starts an application on `addr` (port 0 picks one).
    pub async fn start(addr: SocketAddr, handler: Handler) -> App {
        let listener = TcpListener::bind(addr).await.expect("the app's address");
        let addr = listener.local_addr().expect("a bound address");
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(serve(listener, handler, Arc::clone(&counters)));
        App {
            addr,
            counters,
            task,
        }
    }

    /// Requests handled so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 client (one keep-alive pool).
pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 (prior knowledge) client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A GET of `path` at `addr` with extra headers.
pub fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &'static str)],
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = format!("http://{addr}{path}")
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    for (k, v) in headers {
        req.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    req
}

/// A response's status and whole body.
pub async fn read(resp: Response<Incoming>) -> (u16, Bytes) {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, body)
}

/// One answer: status, `x-app`, `pillion-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status (0 when the request failed without a response).
    pub status: u16,
    /// Which application answered (`x-app`), if one did.
    pub app: String,
    /// The proxy's error code (`pillion-error`), if it answered itself.
    pub error: String,
}

/// Sends one request (bounded to 30 s) and reads the answer.
pub async fn one(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
        Ok(Ok(resp)) => {
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let answer = Answer {
                status: resp.status().as_u16(),
                app: header("x-app"),
                error: header("pillion-error"),
            };
            let _ = resp.into_body().collect().await;
            answer
        }
        _ => Answer {
            status: 0,
            app: String::new(),
            error: String::new(),
        },
    }
}

/// Sends `n` GETs of `path` to `addr` from `concurrency` tasks over one keep-alive
/// client; the answers in completion order.
pub async fn load(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    path: &str,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<Answer> {
    let client = h1_client();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, path) = (client.clone(), Arc::clone(&next), path.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                out.push(one(&client, get(addr, &path, headers)).await);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(part) = t.await {
            all.extend(part);
        }
    }
    all
}

/// Requests per second from `connections` clients, each on its own keep-alive
/// connection, sending GETs of `path` to `addr` for `duration`; `(rate, errors)`.
pub async fn rate(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> (f64, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (done, errors, stop) = (Arc::clone(&done), Arc::clone(&errors), Arc::clone(&stop));
        let path = path.to_string();
        workers.push(tokio::spawn(async move {
            let client = h1_client();
            while !stop.load(Ordering::Relaxed) {
                if one(&client, get(addr, &path, &[])).await.status == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    (count as f64 / elapsed, errors.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_app_answers_and_counts() {
        let app = App::start("127.0.0.1:0".parse().unwrap(), named("a", Duration::ZERO)).await;
        let answers = load(app.addr, 20, 4, "/", &[]).await;
        assert_eq!(answers.len(), 20);
        assert!(answers.iter().all(|a| a.status == 200 && a.app == "a"));
        assert_eq!(app.requests(), 20);
        assert!(app.connections() <= 4);
        let (status, body) =
            read(h2_client().request(get(app.addr, "/", &[])).await.unwrap()).await;
        assert_eq!((status, &body[..]), (200, &b"a"[..]));
    }
}
