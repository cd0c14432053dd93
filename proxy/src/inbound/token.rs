//! The end user's token on a request this proxy serves (inbound, or at the edge as
//! a gateway): verified at once where it can be, or — an opaque token the cache
//! does not know — asked about at the port's introspection endpoint through the
//! mesh first. Either way nothing passes that was not judged.

use http::{HeaderMap, Response, StatusCode};

use crate::app::inputs::Inputs;
use crate::http::body::ResponseBody;
use crate::http::errors::{unauthenticated, HttpError};
use crate::outbound::introspect;
use crate::policy::jwt::{Ask, Checked, Judged, Refusal};
use crate::state::inbound::{InboundPort, ServerRouteState};
use crate::telemetry::metrics::http::Action;
use crate::telemetry::RequestObserver;

/// Why a request's end user was not let through.
#[derive(Debug)]
pub(crate) enum TokenFailure {
    /// The token does not do: 401, 400 or 403 with `WWW-Authenticate`.
    Refused(Refusal),
    /// The introspection endpoint gave no usable answer: 502, 503 or 504.
    Unanswered(HttpError),
}

impl TokenFailure {
    /// The answer the caller gets.
    pub(crate) fn response(&self) -> Response<ResponseBody> {
        match self {
            TokenFailure::Refused(refusal) => unauthenticated(*refusal),
            TokenFailure::Unanswered(e) => e.response(),
        }
    }

    /// What the route's metrics count it as.
    pub(crate) fn action(&self) -> Action {
        match self {
            TokenFailure::Refused(_) => Action::TokenRefused,
            TokenFailure::Unanswered(_) => Action::IntrospectionFailed,
        }
    }

    /// Why, for the log.
    pub(crate) fn reason(&self) -> String {
        match self {
            TokenFailure::Refused(refusal) => refusal.reason().to_string(),
            TokenFailure::Unanswered(e) => e.to_string(),
        }
    }
}

/// Checks the token of a request on `route` of `policy`'s port; the claim headers
/// are set in `headers` when it passes. `parent` is the request's span, if any.
pub(crate) async fn check(
    inputs: &Inputs,
    policy: &InboundPort,
    route: &ServerRouteState,
    headers: &mut HeaderMap,
    parent: Option<&RequestObserver>,
) -> Result<(), TokenFailure> {
    match policy.authenticate(route, headers) {
        Ok(Checked::Done) => Ok(()),
        // Boxed: only requests that wait for the endpoint carry the call's state.
        Ok(Checked::Ask(ask)) => {
            Box::pin(introspected(inputs, policy, route, ask, headers, parent)).await
        }
        Err(refusal) => Err(TokenFailure::Refused(refusal)),
    }
}

async fn introspected(
    inputs: &Inputs,
    policy: &InboundPort,
    route: &ServerRouteState,
    ask: Ask<'_>,
    headers: &mut HeaderMap,
    parent: Option<&RequestObserver>,
) -> Result<(), TokenFailure> {
    let answer = introspect::ask(inputs, ask.endpoint(), ask.token(), parent)
        .await
        .map_err(TokenFailure::Unanswered)?;
    match policy.settle(route, ask, &answer, headers) {
        Ok(()) => Ok(()),
        Err(Judged::Refused(refusal)) => Err(TokenFailure::Refused(refusal)),
        Err(Judged::Unusable(why)) => Err(TokenFailure::Unanswered(HttpError::Introspection {
            status: StatusCode::BAD_GATEWAY,
            reason: why.to_string(),
        })),
    }
}
