//! Per-request policy for HTTP-aware proxying, as pure building blocks over `http`
//! types, so the HTTP layer can wire them in without any of them knowing about hyper.
//!
//! When a new view arrives, the HTTP layer compiles each port's routes once
//! ([`route_match::RouteTable`], [`split::Split`], [`headers::HeaderEditor`],
//! [`rate_limit::RateLimiter`], [`retry::RetryBudget`], [`authz::Authorizer`]); per
//! request it then only reads that compiled state:
//!
//! 1. inbound: strip the forged identity header and set the verified one
//!    ([`authz::set_peer_identity`]), check [`authz::Authorizer::check`], then the
//!    end user's token and the route's claims ([`jwt::Authenticator`],
//!    [`jwt::ClaimRules`]);
//! 2. pick the route ([`route_match::RouteTable::select`]);
//! 3. rate limit ([`rate_limit::RateLimiter::check`]);
//! 4. outbound: pick a backend by weight ([`split::Split::pick`]), then an endpoint of
//!    its subset with [`balance::p2c::Balancer`] over [`balance::peak_ewma::PeakEwma`]
//!    costs, skipping endpoints [`outlier::OutlierDetector`] has ejected;
//! 5. edit headers and rewrite the path ([`headers`]); a route with a cache answers
//!    what it may from [`cache`] instead;
//! 6. on failure, [`retry::should_retry`], [`retry::RetryBudget::try_withdraw`] and
//!    [`backoff::full_jitter`]; report the outcome to the outlier detector and the EWMA.
//!
//! Time is always passed in as `now: Instant` (read once per request), never read
//! inside: that keeps the per-request path to one clock read and lets tests drive a
//! simulated clock. Randomness is passed in as plain integers for the same reasons.
//! Nothing here allocates per request except where it must build a new value (a
//! rewritten URI, a `RateLimit` header), and locks are per endpoint or per key shard,
//! held for a few instructions.

pub(crate) mod api_key;
pub(crate) mod authz;
pub(crate) mod backoff;
pub(crate) mod balance;
pub(crate) mod breaker;
pub(crate) mod cache;
pub(crate) mod fault;
pub(crate) mod headers;
pub(crate) mod jwt;
pub(crate) mod mirror;
pub(crate) mod outlier;
pub(crate) mod rate_limit;
pub(crate) mod retry;
pub(crate) mod route_match;
pub(crate) mod share;
pub(crate) mod split;
pub(crate) mod transform;
