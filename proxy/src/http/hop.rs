//! What changes about a message as it crosses the proxy: hop-by-hop headers are
//! dropped (RFC 9110 §7.6.1); the request goes upstream with an absolute URI
//! ([`upstream_uri`]); and between two proxies an HTTP/1.x request may travel as
//! HTTP/2 carrying its original version in [`ORIG_PROTO`], which the far proxy
//! removes before the application sees the request.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue, HOST};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Uri, Version};

use pillion_api::policy::OWN_HEADER_PREFIX;

use super::errors::HttpError;

/// Carries the version the client spoke across the proxy-to-proxy HTTP/2 hop.
pub(crate) const ORIG_PROTO: HeaderName = HeaderName::from_static("pillion-orig-proto");
/// The [`ORIG_PROTO`] value of an HTTP/1.1 request.
pub(crate) const HTTP_11: HeaderValue = HeaderValue::from_static("HTTP/1.1");
/// The [`ORIG_PROTO`] value of an HTTP/1.0 request.
pub(crate) const HTTP_10: HeaderValue = HeaderValue::from_static("HTTP/1.0");

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Removes hop-by-hop headers and any header the `Connection` header names. `TE:
/// trailers` is kept (gRPC needs it; it is the one `TE` value HTTP/2 allows).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        strip_connection_named(headers);
    }
    let keep_te = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        if name == header::TE && keep_te {
            continue;
        }
        headers.remove(name);
    }
}

/// Rare path: `Connection: close, x-foo` also names headers to drop.
fn strip_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Whether a request (by its head) asks to leave HTTP (`Upgrade`, e.g. WebSocket)
/// or to tunnel (`CONNECT`): such a connection becomes opaque bytes end to end after
/// the answer.
pub(crate) fn upgrade_requested(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    if method == Method::CONNECT {
        return true;
    }
    version != Version::HTTP_2
        && upgrades_but_not_to_h2c(headers)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether `Upgrade` names protocols and none is `h2c`. An h2c upgrade is never
/// passed on (the hop-by-hop strip drops it and the request is served as HTTP/1.1):
/// the connection would become a tunnel of HTTP/2 requests that no route judges.
fn upgrades_but_not_to_h2c(headers: &HeaderMap) -> bool {
    let mut tokens = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .peekable();
    tokens.peek().is_some() && tokens.all(|t| !t.eq_ignore_ascii_case(b"h2c"))
}

/// The [`ORIG_PROTO`] value for a request version, if it is an HTTP/1.x one.
pub(crate) fn orig_proto_value(version: Version) -> Option<HeaderValue> {
    match version {
        Version::HTTP_11 => Some(HTTP_11),
        Version::HTTP_10 => Some(HTTP_10),
        _ => None,
    }
}

/// Whether a request is gRPC: its `content-type` is `application/grpc`, alone or
/// with a `+format` or `;` parameter (gRPC over HTTP/2, the protocol's rule).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(.."application/grpc".len())
                .map(|head| (head, &v["application/grpc".len()..]))
        })
        .is_some_and(|(head, rest)| {
            head.eq_ignore_ascii_case("application/grpc")
                && (rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
        })
}

/// Removes every one of the proxy's own headers (`pillion-*`): what the
/// application or an unverified caller wrote there is never read or passed on.
pub(crate) fn strip_own_headers(headers: &mut HeaderMap) {
    let own = |name: &HeaderName| name.as_str().starts_with(OWN_HEADER_PREFIX);
    while let Some(name) = headers.keys().find(|n| own(n)).cloned() {
        headers.remove(&name);
    }
}

/// Takes [`ORIG_PROTO`] out of a request's headers: the version to speak to the
/// application (`None`: keep the version it arrived with). Unknown values are
/// dropped and ignored.
pub(crate) fn take_orig_proto(headers: &mut HeaderMap) -> Option<Version> {
    let value = headers.remove(ORIG_PROTO)?;
    match value.as_bytes() {
        b"HTTP/1.1" => Some(Version::HTTP_11),
        b"HTTP/1.0" => Some(Version::HTTP_10),
        _ => None,
    }
}

/// The URI a request is sent upstream with: `http://`, its authority (from its URI
/// (HTTP/2, absolute form), else its `Host` header, else `fallback`, the address it
/// was sent to) and `path_and_query`.
pub(crate) fn upstream_uri(
    parts: &Parts,
    fallback: SocketAddr,
    path_and_query: PathAndQuery,
) -> Result<Uri, HttpError> {
    let authority = match (parts.uri.authority(), parts.headers.get(HOST)) {
        (Some(authority), _) => authority.clone(),
        (None, Some(host)) => Authority::try_from(host.as_bytes())
            .map_err(|_| HttpError::BadRequest("the Host header is not a valid authority"))?,
        (None, None) => Authority::try_from(fallback.to_string())
            .map_err(|_| HttpError::BadRequest("no authority for the request"))?,
    };
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| HttpError::BadRequest("the request target is not valid"))
}

/// Refuses a request head that the RFCs call malformed and hyper lets through: more
/// than one `Host`, or an HTTP/1.1 request with neither a `Host` nor an
/// absolute-form target (RFC 9112 §3.2); a `*` target on anything but `OPTIONS`
/// (RFC 9112 §3.2.4, RFC 9113 §8.3.1); userinfo in the authority (RFC 9110 §4.2.4);
/// and what [`check_h2`] adds for HTTP/2. Both directions check it before a
/// request is authorized or forwarded, so a route, an authorization and the
/// application never read different hosts or targets.
pub(crate) fn check_head(parts: &Parts) -> Result<(), HttpError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HttpError::BadRequest("more than one Host header")),
        (None, _) if parts.version == Version::HTTP_11 && parts.uri.authority().is_none() => {
            return Err(HttpError::BadRequest(
                "an HTTP/1.1 request needs a Host header",
            ))
        }
        (host, _) => host,
    };
    if parts.uri.path() == "*" && parts.method != Method::OPTIONS {
        return Err(HttpError::BadRequest("only OPTIONS may target *"));
    }
    let userinfo = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .into_iter()
        .chain(host.map(HeaderValue::as_bytes))
        .any(|a| a.contains(&b'@'));
    if userinfo {
        return Err(HttpError::BadRequest("userinfo in the authority"));
    }
    if parts.version == Version::HTTP_2 {
        check_h2(parts, host)?;
    }
    Ok(())
}

/// The rules of RFC 9113 §8.2.1 and §8.3.1 that h2 leaves to its user: an authority
/// (`:authority` or `Host`, and a `Host` beside `:authority` names the same), a
/// non-empty `:scheme` beside `:authority` (h2 keeps `:scheme` only then, and takes
/// an empty one; `CONNECT` has none), and no field value that starts or ends with a space or tab.
fn check_h2(parts: &Parts, host: Option<&HeaderValue>) -> Result<(), HttpError> {
    match (parts.uri.authority(), host) {
        (None, None) => {
            return Err(HttpError::BadRequest(
                "an HTTP/2 request needs :authority or Host",
            ))
        }
        (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            return Err(HttpError::BadRequest("Host differs from :authority"))
        }
        (Some(_), _)
            if parts.uri.scheme_str().unwrap_or("").is_empty()
                && parts.method != Method::CONNECT =>
        {
            return Err(HttpError::BadRequest("an empty :scheme"))
        }
        _ => {}
    }
    let padded = |v: &[u8]| {
        let blank = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
        blank(v.first()) || blank(v.last())
    };
    if parts.headers.values().any(|v| padded(v.as_bytes())) {
        return Err(HttpError::BadRequest(
            "a field value starts or ends with whitespace",
        ));
    }
    Ok(())
}

/// The request's path and query as sent (`/` when it has none, e.g. `OPTIONS *`
/// aside).
pub(crate) fn path_and_query(parts: &Parts) -> PathAndQuery {
    parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        let is = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&h)
        };
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is(yes), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
            "é",
        ] {
            assert!(!is(no), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn h2c_is_not_an_upgrade_the_proxy_passes_on() {
        let wants = |upgrade: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONNECTION,
                "Upgrade, HTTP2-Settings".parse().unwrap(),
            );
            if !upgrade.is_empty() {
                h.insert(header::UPGRADE, upgrade.parse().unwrap());
            }
            upgrade_requested(&Method::GET, Version::HTTP_11, &h)
        };
        assert!(wants("websocket"));
        assert!(!wants("h2c, websocket"));
        assert!(!wants("h2c"));
        assert!(!wants("H2C"));
        assert!(!wants(" , "));
        assert!(!wants(""));
        assert!(upgrade_requested(
            &Method::CONNECT,
            Version::HTTP_11,
            &HeaderMap::new()
        ));
    }

    #[test]
    fn one_host_or_an_absolute_target() {
        let head = |req: http::request::Builder| req.body(()).unwrap().into_parts().0;
        let ok = head(Request::get("/").header(HOST, "a"));
        assert!(check_head(&ok).is_ok());
        let two = head(Request::get("/").header(HOST, "a").header(HOST, "b"));
        assert!(check_head(&two).is_err());
        let none = head(Request::get("/"));
        assert!(check_head(&none).is_err());
        let absolute = head(Request::get("http://a/"));
        assert!(check_head(&absolute).is_ok());
        let old = head(Request::get("/").version(Version::HTTP_10));
        assert!(check_head(&old).is_ok());
        let h2 = head(Request::get("http://a/").version(Version::HTTP_2));
        assert!(check_head(&h2).is_ok());
    }

    #[test]
    fn targets_and_authorities_the_rfcs_call_malformed() {
        let head = |req: http::request::Builder| req.body(()).unwrap().into_parts().0;
        let refused = |req| check_head(&head(req)).map_err(|e| e.status().as_u16());
        let h1 = |uri: &str| Request::get(uri).header(HOST, "a");
        assert_eq!(refused(h1("*")), Err(400));
        assert_eq!(refused(Request::options("*").header(HOST, "a")), Ok(()));
        assert_eq!(refused(h1("http://u@a/")), Err(400));
        assert_eq!(refused(Request::get("/").header(HOST, "u:p@a")), Err(400));
        assert_eq!(refused(h1("http://a/x@y")), Ok(()));
    }

    #[test]
    fn http2_heads_need_one_authority_a_scheme_and_unpadded_values() {
        let head = |req: http::request::Builder| req.body(()).unwrap().into_parts().0;
        let h2 = |uri: &str| Request::get(uri).version(Version::HTTP_2);
        let refused = |req| check_head(&head(req)).map_err(|e| e.status().as_u16());
        assert_eq!(refused(h2("http://a/")), Ok(()));
        // No :authority: the Host header names the target, and one of them must.
        assert_eq!(refused(h2("/").header(HOST, "a")), Ok(()));
        assert_eq!(refused(h2("/")), Err(400));
        assert_eq!(refused(h2("http://a/").header(HOST, "A")), Ok(()));
        assert_eq!(refused(h2("http://a/").header(HOST, "b")), Err(400));
        // h2 keeps an empty :scheme beside :authority as a URI without a scheme.
        let no_scheme = http::Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.authority = Some(Authority::from_static("a"));
            p
        })
        .unwrap();
        assert_eq!(refused(h2("/").uri(no_scheme.clone())), Err(400));
        let empty_scheme = http::Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.scheme = Some(Scheme::try_from("").unwrap());
            p.authority = Some(Authority::from_static("a"));
            p.path_and_query = Some(PathAndQuery::from_static("/"));
            p
        })
        .unwrap();
        assert_eq!(refused(h2("/").uri(empty_scheme)), Err(400));
        let connect = Request::connect(no_scheme).version(Version::HTTP_2);
        assert_eq!(refused(connect), Ok(()));
        for bad in [" 1", "1\t", "\t"] {
            let padded = h2("http://a/").header("x-a", HeaderValue::from_str(bad).unwrap());
            assert_eq!(refused(padded), Err(400), "{bad:?}");
        }
        assert_eq!(refused(h2("http://a/").header("x-a", "1 2")), Ok(()));
        // HTTP/1 values arrive trimmed; the rule is HTTP/2's alone.
        let h1 = Request::get("/").header(HOST, "a").header("x-a", " 1");
        assert_eq!(refused(h1), Ok(()));
    }

    #[test]
    fn own_headers_go_whatever_their_case_or_count() {
        let mut h = HeaderMap::new();
        h.append("Pillion-Orig-Proto", "HTTP/1.0".parse().unwrap());
        h.append("pillion-peer-identity", "spiffe://x/a".parse().unwrap());
        h.append("pillion-peer-identity", "spiffe://x/b".parse().unwrap());
        h.append("pillion-anything", "1".parse().unwrap());
        h.append("x-pillion-kept", "1".parse().unwrap());
        strip_own_headers(&mut h);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-pillion-kept"]);
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn upgrades_and_connect_are_recognised() {
        let wants_upgrade =
            |r: &Request<()>| upgrade_requested(r.method(), r.version(), r.headers());
        let ws = Request::get("/chat")
            .header(header::CONNECTION, "keep-alive, Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        assert!(wants_upgrade(&ws));
        let no_conn = Request::get("/")
            .header(header::UPGRADE, "h2c")
            .body(())
            .unwrap();
        assert!(!wants_upgrade(&no_conn));
        let connect = Request::connect("example.com:443").body(()).unwrap();
        assert!(wants_upgrade(&connect));
        assert!(!wants_upgrade(&Request::get("/").body(()).unwrap()));
    }

    #[test]
    fn the_upstream_uri_takes_the_best_authority() {
        let fallback: SocketAddr = "198.18.0.100:80".parse().unwrap();
        let uri = |req: Request<()>| {
            let (parts, _) = req.into_parts();
            let pq = path_and_query(&parts);
            upstream_uri(&parts, fallback, pq).map(|u| u.to_string())
        };
        let h2 = Request::get("http://svc.demo:8080/a?b=1").body(()).unwrap();
        assert_eq!(uri(h2).unwrap(), "http://svc.demo:8080/a?b=1");
        let h1 = Request::get("/x").header(HOST, "web").body(()).unwrap();
        assert_eq!(uri(h1).unwrap(), "http://web/x");
        let bare = Request::get("/y").body(()).unwrap();
        assert_eq!(uri(bare).unwrap(), "http://198.18.0.100:80/y");
        let bad = Request::get("/z").header(HOST, "a b").body(()).unwrap();
        assert_eq!(uri(bad).unwrap_err().status(), 400);
    }

    #[test]
    fn orig_proto_round_trips() {
        let mut h = HeaderMap::new();
        h.insert(ORIG_PROTO, orig_proto_value(Version::HTTP_10).unwrap());
        assert_eq!(take_orig_proto(&mut h), Some(Version::HTTP_10));
        assert!(h.is_empty());
        h.insert(ORIG_PROTO, "HTTP/9".parse().unwrap());
        assert_eq!(take_orig_proto(&mut h), None);
        assert!(h.is_empty());
        assert_eq!(orig_proto_value(Version::HTTP_2), None);
    }
}
