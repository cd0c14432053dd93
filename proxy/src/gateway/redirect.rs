//! The gateway's plaintext listeners: every request is answered `308 Permanent
//! Redirect` to the same host and target over HTTPS (the first HTTPS listener's
//! port, left out when it is 443), so a client that typed `http://` lands on TLS and
//! nothing is ever served in the clear. A request whose host is not a name gets 400.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, LOCATION};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;

use super::host::request_host;
use crate::app::inputs::Inputs;
use crate::detect::Protocol;
use crate::http::body::ResponseBody;
use crate::http::errors::HttpError;
use crate::http::{hop, server};
use crate::telemetry::metrics::Direction;
use crate::transport::accept::{Accepted, Stack};

/// Serves the plaintext listeners.
#[derive(Debug)]
pub(crate) struct Redirect {
    inputs: Arc<Inputs>,
    /// The HTTPS port clients are sent to.
    https_port: u16,
}

impl Redirect {
    /// Redirects to HTTPS on `https_port`.
    pub(crate) fn new(inputs: Arc<Inputs>, https_port: u16) -> Redirect {
        Redirect { inputs, https_port }
    }
}

impl Stack for Redirect {
    fn direction(&self) -> Direction {
        Direction::Gateway
    }

    async fn serve(&self, conn: Accepted) {
        let (stream, _info, _guard) = conn.split();
        let port = self.https_port;
        let service = service_fn(move |req: Request<Incoming>| async move {
            Ok::<_, Infallible>(answer(&req.into_parts().0, port))
        });
        server::serve(stream, Protocol::Http1, service, self.inputs.shutdown()).await;
    }
}

/// The redirect for a request with head `parts`, or 400.
pub(crate) fn answer(parts: &Parts, https_port: u16) -> Response<ResponseBody> {
    if let Err(e) = hop::check_head(parts) {
        return e.response();
    }
    let host = match request_host(parts) {
        Ok(host) => host,
        Err(e) => return e.response(),
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let location = format!("https://{host}{port}{}", hop::path_and_query(parts));
    let Ok(location) = HeaderValue::from_str(&location) else {
        return HttpError::BadRequest("the target cannot be redirected").response();
    };
    let mut response = Response::new(ResponseBody::local(String::new()));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;

    fn location(uri: &str, host: &str, port: u16) -> (u16, Option<String>) {
        let req = Request::builder()
            .uri(uri)
            .header(HOST, host)
            .body(())
            .unwrap();
        let resp = answer(&req.into_parts().0, port);
        let loc = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        (resp.status().as_u16(), loc)
    }

    #[test]
    fn plaintext_is_sent_to_the_same_host_and_target_over_https() {
        assert_eq!(
            location("/a/b?c=d", "Shop.Test:8080", 8443),
            (308, Some("https://shop.test:8443/a/b?c=d".into()))
        );
        assert_eq!(
            location("/", "shop.test", 443),
            (308, Some("https://shop.test/".into()))
        );
        assert_eq!(location("/", "evil.test/x", 443).0, 400);
        assert_eq!(location("/", "a@b.test", 443).0, 400);
    }
}
