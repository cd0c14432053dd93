//! Trace context on the wire: reads W3C `traceparent` (and keeps `tracestate` in the
//! headers, untouched) or, failing that, B3 single (`b3`) or multi (`x-b3-*`); writes
//! `traceparent` for the next hop and the app. Whatever is malformed is ignored, as
//! if absent: a bad header can never fail a request.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::ids::{hex_into, parse_hex, SpanId, TraceId};

/// W3C Trace Context header.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor state, passed through with a continued `traceparent`.
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 single-header propagation.
pub(crate) const B3: HeaderName = HeaderName::from_static("b3");
/// B3 multi-header trace id.
pub(crate) const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// B3 multi-header span id.
pub(crate) const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// B3 multi-header parent span id.
pub(crate) const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// B3 multi-header sampling decision.
pub(crate) const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// B3 multi-header debug flag (debug implies sampled).
pub(crate) const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which header family a parent came in, so the proxy answers in kind: an app that
/// speaks only B3 still sees its context continued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// W3C `traceparent` (and `tracestate`).
    W3c,
    /// The single `b3` header.
    B3Single,
    /// The `x-b3-*` headers.
    B3Multi,
}

/// A remote parent span read from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span, which becomes our span's parent.
    pub span_id: SpanId,
    /// The caller's sampling decision; `None` when B3 deferred it to us.
    pub sampled: Option<bool>,
    /// The header family it came in.
    pub format: Format,
}

/// What a request's headers say about its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// No (valid) context: a new trace, sampled by ratio.
    None,
    /// Only a B3 sampling decision (`b3: 0`, `x-b3-sampled: 1`, …) without ids.
    Decision(bool),
    /// A parent span to continue.
    Parent(Parent),
}

/// Reads the trace context of a request: `traceparent` wins, then `b3`, then
/// `x-b3-*`. Never fails; invalid headers count as absent.
pub(crate) fn extract(headers: &HeaderMap) -> Incoming {
    if let Some(value) = single(headers, &TRACEPARENT) {
        if let Some(parent) = parse_traceparent(value.as_bytes()) {
            return Incoming::Parent(parent);
        }
    }
    if let Some(value) = single(headers, &B3) {
        if let Some(incoming) = parse_b3_single(value.as_bytes()) {
            return incoming;
        }
    }
    parse_b3_multi(headers)
}

/// The header's only value; `None` if absent or repeated (ambiguous, so ignored).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// Parses `version-traceid-parentid-flags`. Version `ff` is invalid; a future version
/// may be longer, and then its first four fields are read as version 00's.
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 {
        return None;
    }
    let version = parse_hex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = TraceId(parse_hex::<16>(&v[3..35])?);
    let span_id = SpanId(parse_hex::<8>(&v[36..52])?);
    let flags = parse_hex::<1>(&v[53..55])?[0];
    if trace_id.is_zero() || span_id.is_zero() {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 0x01 == 0x01),
        format: Format::W3c,
    })
}

/// A B3 trace id: 32 hex digits, or 16 (a 64-bit id, zero-extended on the left).
fn b3_trace_id(text: &[u8]) -> Option<TraceId> {
    let id = match text.len() {
        32 => parse_hex::<16>(text)?,
        16 => {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&parse_hex::<8>(text)?);
            id
        }
        _ => return None,
    };
    let id = TraceId(id);
    (!id.is_zero()).then_some(id)
}

fn b3_span_id(text: &[u8]) -> Option<SpanId> {
    let id = SpanId(parse_hex::<8>(text)?);
    (!id.is_zero()).then_some(id)
}

/// `1` and `d` (debug) sample, `0` does not.
fn b3_sampling_state(text: &[u8]) -> Option<bool> {
    match text {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// Parses `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]` or `b3: {sampling}`.
pub(crate) fn parse_b3_single(v: &[u8]) -> Option<Incoming> {
    let mut fields = v.split(|&c| c == b'-');
    let first = fields.next()?;
    let Some(second) = fields.next() else {
        return b3_sampling_state(first).map(Incoming::Decision);
    };
    let trace_id = b3_trace_id(first)?;
    let span_id = b3_span_id(second)?;
    let sampled = match fields.next() {
        Some(state) => Some(b3_sampling_state(state)?),
        None => None,
    };
    if let Some(parent) = fields.next() {
        b3_span_id(parent)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Incoming::Parent(Parent {
        trace_id,
        span_id,
        sampled,
        format: Format::B3Single,
    }))
}

/// Parses the `x-b3-*` headers; anything inconsistent counts as no context.
pub(crate) fn parse_b3_multi(headers: &HeaderMap) -> Incoming {
    let debug = single(headers, &X_B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match single(headers, &X_B3_SAMPLED).map(HeaderValue::as_bytes) {
        _ if debug => Some(true),
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        _ => None,
    };
    let trace = single(headers, &X_B3_TRACEID).and_then(|v| b3_trace_id(v.as_bytes()));
    let span = single(headers, &X_B3_SPANID).and_then(|v| b3_span_id(v.as_bytes()));
    match (trace, span, sampled) {
        (Some(trace_id), Some(span_id), sampled) => Incoming::Parent(Parent {
            trace_id,
            span_id,
            sampled,
            format: Format::B3Multi,
        }),
        (None, None, Some(decision)) => Incoming::Decision(decision),
        _ => Incoming::None,
    }
}

/// `00-{trace}-{span}-{flags}`, formatted on the stack.
pub(crate) fn format_traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0..2].copy_from_slice(b"00");
    hex_into(&trace_id.0, &mut out[3..35]);
    hex_into(&span_id.0, &mut out[36..52]);
    out[53..55].copy_from_slice(if sampled { b"01" } else { b"00" });
    out
}

/// The context our span hands on: to the app (inbound) or the next hop (outbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outgoing {
    /// The trace.
    pub trace_id: TraceId,
    /// Our span, the parent of whatever the receiver does.
    pub span_id: SpanId,
    /// Our span's own parent, for `x-b3-parentspanid`.
    pub parent_span_id: Option<SpanId>,
    /// Whether the trace is sampled.
    pub sampled: bool,
    /// The family the parent came in (W3C for a new trace).
    pub format: Format,
}

/// Writes `ctx` into `headers`: always `traceparent`; the B3 headers too when the
/// parent came as B3. `tracestate` stays as received when a W3C parent is continued
/// and is removed otherwise (a new trace, or a B3 one: it would describe another).
pub(crate) fn inject(ctx: &Outgoing, headers: &mut HeaderMap) {
    let tp = format_traceparent(&ctx.trace_id, &ctx.span_id, ctx.sampled);
    headers.insert(TRACEPARENT, ascii_value(&tp));
    if ctx.format != Format::W3c || ctx.parent_span_id.is_none() {
        headers.remove(TRACESTATE);
    }
    let flag: &'static [u8] = if ctx.sampled { b"1" } else { b"0" };
    match ctx.format {
        Format::W3c => {}
        Format::B3Single => {
            // {trace:32}-{span:16}-{flag}
            let mut b3 = [b'-'; 51];
            b3[..32].copy_from_slice(&ctx.trace_id.to_hex());
            b3[33..49].copy_from_slice(&ctx.span_id.to_hex());
            b3[50..].copy_from_slice(flag);
            headers.insert(B3, ascii_value(&b3));
        }
        Format::B3Multi => {
            headers.insert(X_B3_TRACEID, ascii_value(&ctx.trace_id.to_hex()));
            headers.insert(X_B3_SPANID, ascii_value(&ctx.span_id.to_hex()));
            headers.insert(
                X_B3_SAMPLED,
                HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
            );
            headers.remove(X_B3_FLAGS);
            match ctx.parent_span_id {
                Some(parent) => {
                    headers.insert(X_B3_PARENTSPANID, ascii_value(&parent.to_hex()));
                }
                None => {
                    headers.remove(X_B3_PARENTSPANID);
                }
            }
        }
    }
}

/// A header value from hex digits and dashes, which are always valid.
fn ascii_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn parent(sampled: Option<bool>, format: Format) -> Incoming {
        Incoming::Parent(Parent {
            trace_id: TraceId(TRACE),
            span_id: SpanId(SPAN),
            sampled,
            format,
        })
    }

    #[test]
    fn w3c_valid() {
        assert_eq!(
            extract(&headers(&[("traceparent", TP)])),
            parent(Some(true), Format::W3c)
        );
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(
            extract(&headers(&[("traceparent", &unsampled)])),
            parent(Some(false), Format::W3c)
        );
        // Other flag bits are ignored; only bit 0 means sampled.
        let other = TP.replace("-01", "-03");
        assert_eq!(
            extract(&headers(&[("traceparent", &other)])),
            parent(Some(true), Format::W3c)
        );
        // A future version with extra fields is read by its first four.
        let future = TP.replacen("00-", "cc-", 1) + "-what-ever";
        assert_eq!(
            extract(&headers(&[("traceparent", &future)])),
            parent(Some(true), Format::W3c)
        );
    }

    #[test]
    fn w3c_invalid_is_ignored() {
        let bad = [
            "",
            "00",
            &TP[..54],
            &format!("{TP}-"),
            &TP.replacen("00-", "ff-", 1),
            &TP.replacen("00-", "0g-", 1),
            &TP.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &TP.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &TP.replace("4bf92f", "4BF92F"),
            &TP.replace("-01", "-0x"),
            &TP.replace('-', "_"),
            &(TP.replacen("00-", "01-", 1) + "x"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\u{e9}",
        ];
        for value in bad {
            let Ok(v) = HeaderValue::from_str(value) else {
                continue;
            };
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, v);
            assert_eq!(extract(&h), Incoming::None, "{value:?}");
        }
        // Non-UTF-8 bytes are just bytes: still ignored, never a panic.
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_bytes(&[0xff; 55]).unwrap());
        assert_eq!(extract(&h), Incoming::None);
        // Two traceparent headers are ambiguous.
        assert_eq!(
            extract(&headers(&[("traceparent", TP), ("traceparent", TP)])),
            Incoming::None
        );
    }

    #[test]
    fn w3c_wins_over_b3() {
        let h = headers(&[("b3", "0"), ("traceparent", TP), ("x-b3-sampled", "0")]);
        assert_eq!(extract(&h), parent(Some(true), Format::W3c));
        // An invalid traceparent falls back to B3.
        let h = headers(&[("traceparent", "garbage"), ("b3", "0")]);
        assert_eq!(extract(&h), Incoming::Decision(false));
    }

    #[test]
    fn b3_single() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        assert_eq!(
            extract(&headers(&[("b3", id)])),
            parent(None, Format::B3Single)
        );
        assert_eq!(
            extract(&headers(&[("b3", &format!("{id}-1"))])),
            parent(Some(true), Format::B3Single)
        );
        assert_eq!(
            extract(&headers(&[("b3", &format!("{id}-d-05e3ac9a4f6e3b90"))])),
            parent(Some(true), Format::B3Single)
        );
        assert_eq!(
            extract(&headers(&[("b3", &format!("{id}-0"))])),
            parent(Some(false), Format::B3Single)
        );
        assert_eq!(extract(&headers(&[("b3", "0")])), Incoming::Decision(false));
        assert_eq!(extract(&headers(&[("b3", "d")])), Incoming::Decision(true));
        // A 64-bit trace id is zero-extended.
        let Incoming::Parent(p) =
            extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")]))
        else {
            panic!("64-bit b3 trace id not accepted")
        };
        assert_eq!(p.trace_id.to_string(), "0000000000000000a3ce929d0e0e4736");
        for bad in [
            "x",
            "2",
            &format!("{id}-2"),
            &format!("{id}-1-zz"),
            &format!("{id}-1-05e3ac9a4f6e3b90-extra"),
            "4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7",
            "4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000",
            "-",
            "--",
        ] {
            assert_eq!(extract(&headers(&[("b3", bad)])), Incoming::None, "{bad:?}");
        }
    }

    #[test]
    fn b3_multi() {
        let base = [
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ];
        assert_eq!(extract(&headers(&base)), parent(None, Format::B3Multi));
        let mut with = base.to_vec();
        with.push(("x-b3-sampled", "0"));
        assert_eq!(
            extract(&headers(&with)),
            parent(Some(false), Format::B3Multi)
        );
        with.push(("x-b3-flags", "1"));
        assert_eq!(
            extract(&headers(&with)),
            parent(Some(true), Format::B3Multi)
        );
        assert_eq!(
            extract(&headers(&[("x-b3-sampled", "1")])),
            Incoming::Decision(true)
        );
        // A trace id without a span id is incomplete.
        assert_eq!(extract(&headers(&base[..1])), Incoming::None);
        assert_eq!(
            extract(&headers(&[
                ("x-b3-traceid", "nothex"),
                ("x-b3-spanid", "00f067aa0ba902b7")
            ])),
            Incoming::None
        );
    }

    #[test]
    fn traceparent_round_trips() {
        let t = TraceId::random();
        let s = SpanId::random();
        for sampled in [true, false] {
            let text = format_traceparent(&t, &s, sampled);
            let p = parse_traceparent(&text).unwrap();
            assert_eq!((p.trace_id, p.span_id, p.sampled), (t, s, Some(sampled)));
        }
        assert_eq!(
            &format_traceparent(&TraceId(TRACE), &SpanId(SPAN), true)[..],
            TP.as_bytes()
        );
    }

    #[test]
    fn inject_w3c_keeps_tracestate() {
        let mut h = headers(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")]);
        let ctx = Outgoing {
            trace_id: TraceId(TRACE),
            span_id: SpanId([1; 8]),
            parent_span_id: Some(SpanId(SPAN)),
            sampled: true,
            format: Format::W3c,
        };
        inject(&ctx, &mut h);
        assert_eq!(
            h.get(TRACEPARENT).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0101010101010101-01"
        );
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(h.get(TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn inject_b3_answers_in_kind_and_drops_foreign_tracestate() {
        let ctx = Outgoing {
            trace_id: TraceId(TRACE),
            span_id: SpanId([1; 8]),
            parent_span_id: Some(SpanId(SPAN)),
            sampled: true,
            format: Format::B3Single,
        };
        let mut h = headers(&[("b3", "x"), ("tracestate", "stale=1")]);
        inject(&ctx, &mut h);
        assert_eq!(
            h.get(B3).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736-0101010101010101-1"
        );
        assert!(h.get(TRACESTATE).is_none());
        assert!(h.get(TRACEPARENT).is_some());
        assert_eq!(extract(&h), parent_of(&ctx));

        let ctx = Outgoing {
            format: Format::B3Multi,
            ..ctx
        };
        let mut h = headers(&[("x-b3-flags", "1")]);
        inject(&ctx, &mut h);
        assert_eq!(
            h.get(X_B3_TRACEID).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(h.get(X_B3_SPANID).unwrap(), "0101010101010101");
        assert_eq!(h.get(X_B3_PARENTSPANID).unwrap(), "00f067aa0ba902b7");
        assert_eq!(h.get(X_B3_SAMPLED).unwrap(), "1");
        assert!(h.get(X_B3_FLAGS).is_none());
        h.remove(TRACEPARENT);
        assert!(matches!(extract(&h), Incoming::Parent(p) if p.span_id == ctx.span_id));
    }

    fn parent_of(ctx: &Outgoing) -> Incoming {
        Incoming::Parent(Parent {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            sampled: Some(ctx.sampled),
            format: Format::W3c,
        })
    }
}
