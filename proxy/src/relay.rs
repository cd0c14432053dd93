//! The top of the plain-TCP stack: refuses loops, connects to the chosen target
//! and forwards bytes, recording metrics and one log line per connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::accept::Accepted;
use crate::loop_guard::LoopGuard;
use crate::metrics::{Direction, DirectionMetrics};
use crate::transport::connect::connect;
use crate::transport::forward::{forward, ByteCounters};

/// What a relay needs besides the connection; shared by all of a direction's
/// connections.
#[derive(Clone, Debug)]
pub struct Relay {
    /// `outbound` or `inbound`, for logs.
    pub direction: Direction,
    /// Refuses connections that would come back into the proxy.
    pub loop_guard: LoopGuard,
    /// Time allowed for the upstream connect.
    pub connect_timeout: Duration,
    /// This direction's metric handles.
    pub metrics: DirectionMetrics,
    /// This direction's byte counters (the same counters, grouped for forwarding).
    pub counters: ByteCounters,
}

impl Relay {
    /// Builds a relay from a direction's metrics.
    pub fn new(
        direction: Direction,
        loop_guard: LoopGuard,
        connect_timeout: Duration,
        metrics: DirectionMetrics,
    ) -> Self {
        let counters = ByteCounters {
            sent: metrics.sent_bytes.clone(),
            received: metrics.received_bytes.clone(),
        };
        Self {
            direction,
            loop_guard,
            connect_timeout,
            metrics,
            counters,
        }
    }

    /// Relays `conn` to `target` until both sides are done.
    pub async fn relay(&self, conn: Accepted, target: SocketAddr) {
        let Accepted {
            stream,
            client,
            local,
            orig_dst,
            guard: _guard,
        } = conn;
        let direction = self.direction;
        if let Some(reason) = self.loop_guard.check(local, orig_dst, target) {
            self.metrics.loops_refused.inc();
            tracing::warn!(
                %direction,
                %client,
                %orig_dst,
                %target,
                %local,
                reason = reason.as_str(),
                "refusing connection that would loop back into the proxy"
            );
            return;
        }
        tracing::debug!(%direction, %client, %orig_dst, %target, "connection opened");
        let started = Instant::now();
        let upstream = match connect(target, self.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(err) => {
                self.metrics.connect_failures.inc();
                tracing::info!(%direction, %client, %orig_dst, %target, error = %err, "upstream connect failed");
                return;
            }
        };
        match forward(stream, upstream, &self.counters).await {
            Ok(t) => tracing::debug!(
                %direction,
                %client,
                %orig_dst,
                sent = t.sent,
                received = t.received,
                duration_ms = elapsed_ms(started),
                "connection closed"
            ),
            Err(err) => tracing::debug!(
                %direction,
                %client,
                %orig_dst,
                sent = err.transferred.sent,
                received = err.transferred.received,
                duration_ms = elapsed_ms(started),
                error = %err.source,
                "connection closed with an error"
            ),
        }
    }
}

/// Milliseconds since `start`, saturating.
fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
