//! One OTLP export request over the wire, either transport: gRPC (HTTP/2 with prior
//! knowledge, the 5-byte gRPC message frame, `grpc-status` in the trailers) or
//! HTTP/protobuf (`POST /v1/traces`). Both ride one hyper client, which pools the
//! connection and reconnects by itself after a collector restart.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::config::{OtlpConfig, OtlpProtocol};

/// The gRPC method path of the trace service.
pub(crate) const GRPC_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Why an export request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No connection, or the connection broke (collector down).
    #[error("cannot reach the collector: {0}")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// The collector did not answer within the export timeout.
    #[error("the collector did not answer within {0:?}")]
    Timeout(Duration),
    /// The response body could not be read.
    #[error("reading the collector's answer: {0}")]
    Body(#[source] hyper::Error),
    /// The collector answered with an HTTP error status.
    #[error("the collector answered HTTP {0}")]
    Http(u16),
    /// The collector answered with a gRPC error status.
    #[error("the collector answered gRPC status {code}: {message}")]
    Grpc {
        /// The `grpc-status` code.
        code: u32,
        /// The `grpc-message`.
        message: String,
    },
}

impl ExportError {
    /// Whether trying the same batch again later may succeed (OTLP's retryable
    /// statuses and every transport failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            ExportError::Unreachable(_) | ExportError::Timeout(_) | ExportError::Body(_) => true,
            ExportError::Http(code) => matches!(code, 429 | 502 | 503 | 504),
            // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE,
            // UNAVAILABLE, DATA_LOSS.
            ExportError::Grpc { code, .. } => matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15),
        }
    }
}

/// A client for one collector.
#[derive(Clone, Debug)]
pub struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    protocol: OtlpProtocol,
    timeout: Duration,
}

impl Transport {
    /// A client for `config`'s endpoint (nothing is connected yet).
    pub fn new(config: &OtlpConfig) -> Transport {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_max_idle_per_host(1);
        if config.protocol == OtlpProtocol::Grpc {
            builder.http2_only(true);
        }
        Transport {
            client: builder.build(connector),
            uri: config.export_uri(),
            protocol: config.protocol,
            timeout: config.timeout,
        }
    }

    /// Sends one request; answers how many of its spans the collector rejected.
    pub async fn export(&self, req: &ExportTraceServiceRequest) -> Result<i64, ExportError> {
        match tokio::time::timeout(self.timeout, self.export_unbounded(req)).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Timeout(self.timeout)),
        }
    }

    async fn export_unbounded(&self, req: &ExportTraceServiceRequest) -> Result<i64, ExportError> {
        let (body, content_type) = match self.protocol {
            OtlpProtocol::Grpc => (grpc_frame(req), "application/grpc"),
            OtlpProtocol::Http => (Bytes::from(req.encode_to_vec()), "application/x-protobuf"),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.protocol == OtlpProtocol::Grpc {
            headers.insert(TE, HeaderValue::from_static("trailers"));
            *request.version_mut() = http::Version::HTTP_2;
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(ExportError::Unreachable)?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(ExportError::Body)?;
        let trailers = collected.trailers().cloned();
        let payload = collected.to_bytes();
        if !parts.status.is_success() {
            return Err(ExportError::Http(parts.status.as_u16()));
        }
        let message = match self.protocol {
            OtlpProtocol::Grpc => {
                // A trailers-only answer carries the status in the headers.
                let status = trailers.as_ref().unwrap_or(&parts.headers);
                grpc_status(status)?;
                payload.get(5..).unwrap_or_default()
            }
            OtlpProtocol::Http => &payload[..],
        };
        Ok(ExportTraceServiceResponse::decode(message)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_spans.max(0)))
    }
}

/// An uncompressed gRPC length-prefixed message.
pub(crate) fn grpc_frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// `Ok` for `grpc-status: 0`; a missing status counts as an error too.
fn grpc_status(headers: &HeaderMap) -> Result<(), ExportError> {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match code {
        Some(0) => Ok(()),
        code => Err(ExportError::Grpc {
            code: code.unwrap_or(2),
            message: headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no grpc-status")
                .to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frame_is_flag_length_message() {
        let req = ExportTraceServiceRequest::default();
        assert_eq!(&grpc_frame(&req)[..], &[0, 0, 0, 0, 0]);
        let req = super::super::encode::request(
            &super::super::encode::resource(&Default::default()),
            vec![],
        );
        let frame = grpc_frame(&req);
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - 5);
        assert_eq!(ExportTraceServiceRequest::decode(&frame[5..]).unwrap(), req);
    }

    #[test]
    fn grpc_statuses() {
        let mut h = HeaderMap::new();
        assert!(matches!(
            grpc_status(&h),
            Err(ExportError::Grpc { code: 2, .. })
        ));
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(grpc_status(&h).is_ok());
        h.insert("grpc-status", HeaderValue::from_static("14"));
        let err = grpc_status(&h).unwrap_err();
        assert!(err.is_retryable());
        h.insert("grpc-status", HeaderValue::from_static("3"));
        assert!(!grpc_status(&h).unwrap_err().is_retryable());
        assert!(ExportError::Http(503).is_retryable());
        assert!(!ExportError::Http(400).is_retryable());
    }
}
