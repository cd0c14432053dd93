//! A route's body transforms on the request path: the caller's body read whole
//! (within the route's bound and timeout) and rewritten before any try is sent;
//! the upstream's answer read whole and rewritten before it goes back.
//!
//! What cannot be rewritten is refused, never passed on as it came: the caller's
//! body with `413` (too large), `415` (not the declared format, or compressed),
//! `408` (too slow) or `400` (does not parse, or an edit finds no place); the
//! upstream's with `502` (`504` when too slow). Messages without a body (and
//! answers to `HEAD`, `204`, `304`) pass with their bodies untouched, their fields
//! describing the rewritten representation (type, weak `ETag`, no digests). A
//! request whose answer is rewritten asks for it uncompressed, whole
//! (`Accept-Encoding: identity`, no `Range`) and, when converted, in the format
//! the route reads; the rewritten answer's `ETag` becomes weak.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_RANGE, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

use crate::http::body::{declared_len, ResponseBody};
use crate::http::errors::HttpError;
use crate::policy::transform::{Problem, Rewrite, Transforms};
use crate::upstream::pool::UpstreamBody;

/// Fields describing an answer's bytes that a rewrite makes wrong.
const DIGESTS: [&str; 4] = ["content-md5", "content-digest", "repr-digest", "digest"];

/// How a whole body read went.
pub(super) enum Whole {
    /// All of it.
    Read(Bytes),
    /// More than the bound (declared or read).
    TooLarge,
    /// It broke off, for this reason.
    Broken(String),
    /// It did not end by the deadline.
    Late,
}

/// Reads `body` whole if it is at most `max` bytes and ends by `deadline`.
pub(super) async fn read_whole<B>(body: B, max: u64, deadline: Option<Instant>) -> Whole
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if declared_len(&body) > max {
        return Whole::TooLarge;
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let collected = Limited::new(body, limit).collect();
    let result = match deadline {
        Some(at) => match tokio::time::timeout_at(at.into(), collected).await {
            Ok(result) => result,
            Err(_) => return Whole::Late,
        },
        None => collected.await,
    };
    match result {
        Ok(collected) => Whole::Read(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Whole::TooLarge,
        Err(e) => Whole::Broken(pillion_api::error::chain(&*e)),
    }
}

/// The caller's body, rewritten, with `headers` updated to match; an empty body
/// comes back empty and untouched.
pub(super) async fn request<B>(
    transforms: &Transforms,
    rewrite: &Rewrite,
    headers: &mut HeaderMap,
    body: B,
    timeout: Option<Duration>,
    start: Instant,
) -> Result<Bytes, HttpError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let max = transforms.max_body_bytes;
    if declared_len(&body) > max {
        return Err(HttpError::TooLarge(max));
    }
    let checked = rewrite.accepts(headers);
    let bytes = match read_whole(body, max, timeout.map(|t| start + t)).await {
        Whole::Read(bytes) => bytes,
        Whole::TooLarge => return Err(HttpError::TooLarge(max)),
        Whole::Broken(why) => return Err(HttpError::BadBody(why)),
        Whole::Late => return Err(HttpError::BodyTimeout(timeout.unwrap_or_default())),
    };
    if bytes.is_empty() {
        return Ok(bytes);
    }
    checked.map_err(|e| HttpError::MediaType(e.to_string()))?;
    let (out, retyped) = rewrite.apply(&bytes).map_err(|e| match e {
        Problem::MediaType(_) => HttpError::MediaType(e.to_string()),
        Problem::Body(why) => HttpError::BadBody(why),
    })?;
    headers.insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    describe(headers, retyped);
    Ok(Bytes::from(out))
}

/// What a request whose answer will be rewritten asks of the upstream: the whole
/// answer, uncompressed, and (when the route converts) in the format it reads.
pub(super) fn ask_for_whole_answer(headers: &mut HeaderMap, rewrite: &Rewrite) {
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    headers.remove(RANGE);
    headers.remove(IF_RANGE);
    if let Some(reads) = rewrite.converts_from() {
        headers.insert(ACCEPT, reads);
    }
}

/// The upstream's answer, rewritten (or untouched when it has no body).
pub(super) async fn response(
    transforms: &Transforms,
    rewrite: &Rewrite,
    method: &Method,
    response: Response<UpstreamBody>,
    deadline: Option<(Instant, Duration)>,
) -> Result<Response<ResponseBody>, HttpError> {
    let status = response.status();
    let head = *method == Method::HEAD;
    let bodiless = head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let (mut parts, body) = response.into_parts();
    if bodiless {
        // The fields still describe the rewritten representation (a `HEAD`'s or
        // a `304`'s must match the `GET`'s), but its length is not known here.
        if head {
            parts.headers.remove(CONTENT_LENGTH);
        }
        let retyped = rewrite
            .converts_to()
            .filter(|_| parts.headers.contains_key(CONTENT_TYPE));
        describe(&mut parts.headers, retyped);
        return Ok(Response::from_parts(parts, ResponseBody::Upstream(body)));
    }
    let max = transforms.max_body_bytes;
    let bytes = match read_whole(body, max, deadline.map(|(at, _)| at)).await {
        Whole::Read(bytes) => bytes,
        Whole::TooLarge => {
            return Err(HttpError::BadAnswer(format!(
                "it is larger than the route's {max} bytes"
            )))
        }
        Whole::Broken(why) => return Err(HttpError::BadAnswer(format!("it broke off: {why}"))),
        Whole::Late => {
            return Err(HttpError::Timeout(
                deadline.map(|(_, t)| t).unwrap_or_default(),
            ))
        }
    };
    if bytes.is_empty() {
        // Nothing to rewrite, whatever it says it is.
        parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
        return Ok(Response::from_parts(parts, ResponseBody::local(bytes)));
    }
    if let Err(e) = rewrite.accepts(&parts.headers) {
        return Err(HttpError::BadAnswer(e.to_string()));
    }
    let (out, retyped) =
        (rewrite.apply(&bytes)).map_err(|e| HttpError::BadAnswer(e.to_string()))?;
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    describe(&mut parts.headers, retyped);
    Ok(Response::from_parts(parts, ResponseBody::local(out)))
}

/// The fields of a rewritten message that described the bytes it had: its type
/// when the format changed, digests and ranges gone, a strong `ETag` made weak
/// (the same content, no longer the same bytes).
fn describe(headers: &mut HeaderMap, retyped: Option<HeaderValue>) {
    if let Some(content_type) = retyped {
        headers.insert(CONTENT_TYPE, content_type);
    }
    for name in DIGESTS {
        headers.remove(name);
    }
    headers.remove(ACCEPT_RANGES);
    if let Some(tag) = headers.get(ETAG) {
        if !tag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(weak) => headers.insert(ETAG, weak),
                Err(_) => headers.remove(ETAG),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use serde_json::json;

    use super::*;

    fn transforms(json: serde_json::Value) -> Transforms {
        let t: pillion_api::transform::Transform = serde_json::from_value(json).unwrap();
        t.validate().unwrap();
        Transforms::compile(&t).unwrap()
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }

    #[tokio::test]
    async fn a_request_body_is_rewritten_and_its_length_set() {
        let t = transforms(json!({"request": {"json": [{"remove": {"path": "/admin"}}]}}));
        let rewrite = t.request.as_ref().unwrap();
        let mut headers = json_headers();
        let body = Full::new(Bytes::from_static(br#"{"admin": true, "name": "x"}"#));
        let out = request(&t, rewrite, &mut headers, body, None, Instant::now())
            .await
            .unwrap();
        assert_eq!(&out[..], br#"{"name":"x"}"#);
        assert_eq!(headers[CONTENT_LENGTH], "12");
        let mut digested = json_headers();
        digested.insert("content-digest", HeaderValue::from_static("sha-256=:x:"));
        digested.insert("digest", HeaderValue::from_static("SHA-256=x"));
        let body = Full::new(Bytes::from_static(br#"{"admin": true}"#));
        request(&t, rewrite, &mut digested, body, None, Instant::now())
            .await
            .unwrap();
        assert!(
            digested.get("content-digest").is_none() && digested.get("digest").is_none(),
            "digests of the bytes the caller sent are gone"
        );
    }

    #[tokio::test]
    async fn request_bodies_that_cannot_be_rewritten_are_refused_with_their_status() {
        let t = transforms(
            json!({"request": {"json": [{"remove": {"path": "/admin"}}]},
                                  "max_body_bytes": 16}),
        );
        let rewrite = t.request.as_ref().unwrap();
        let cases: [(&[u8], HeaderMap, u16); 4] = [
            (br#"{"admin": true, "padding": 1}"#, json_headers(), 413),
            (br#"{"admin": true}"#, HeaderMap::new(), 415),
            (br#"{"admin": tru"#, json_headers(), 400),
            (
                br#"{"admin": 1}"#,
                {
                    let mut h = json_headers();
                    h.insert("content-encoding", HeaderValue::from_static("gzip"));
                    h
                },
                415,
            ),
        ];
        for (body, mut headers, status) in cases {
            let e = request(
                &t,
                rewrite,
                &mut headers,
                Full::new(Bytes::from_static(body)),
                None,
                Instant::now(),
            )
            .await
            .unwrap_err();
            assert_eq!(
                e.status().as_u16(),
                status,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A body without a declared length, larger than the bound, in pieces.
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..4)
            .map(|_| Ok(Frame::data(Bytes::from_static(b"{\"a\":1}"))))
            .collect();
        let streamed = StreamBody::new(futures::stream::iter(chunks));
        let e = request(
            &t,
            rewrite,
            &mut json_headers(),
            streamed,
            None,
            Instant::now(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // A body that never ends is cut at the route's timeout.
        let (_tx, pending) =
            http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
        let e = request(
            &t,
            rewrite,
            &mut json_headers(),
            pending,
            Some(Duration::from_millis(50)),
            Instant::now(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn an_empty_body_passes_untouched() {
        let t = transforms(json!({"request": {"json": [{"remove": {"path": "/a"}}]}}));
        let mut headers = HeaderMap::new();
        let out = request(
            &t,
            t.request.as_ref().unwrap(),
            &mut headers,
            Full::new(Bytes::new()),
            None,
            Instant::now(),
        )
        .await
        .unwrap();
        assert!(out.is_empty());
        assert!(headers.is_empty(), "no type needed, nothing set");
    }

    #[test]
    fn the_request_asks_for_the_whole_answer_uncompressed() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
        headers.insert(RANGE, HeaderValue::from_static("bytes=0-10"));
        let t = transforms(json!({"response": {"convert": "xml_to_json"}}));
        ask_for_whole_answer(&mut headers, t.response.as_ref().unwrap());
        assert_eq!(
            headers[ACCEPT], "application/xml",
            "the format the route reads"
        );
        assert_eq!(headers[ACCEPT_ENCODING], "identity");
        assert!(headers.get(RANGE).is_none());
    }
}
