//! Which requests get spans: parent-based (an incoming parent's sampled flag is
//! obeyed, so a trace is never half-recorded) with a ratio for new traces. The ratio
//! compares the trace id's low 8 bytes against a threshold, so every proxy that sees
//! the same new trace id decides alike. A ratio of 0 switches tracing off entirely.

use super::context::{Format, Incoming};
use super::ids::{SpanId, TraceId};

/// A sampling ratio outside `0.0..=1.0` (or not a number).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--trace-sampling must be between 0.0 and 1.0, got {0}")]
pub struct RatioError(pub f64);

/// The parent-based ratio sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// New traces are sampled when `trace_id.low_u64() < threshold`; `u64::MAX` with
    /// `always` means every one.
    threshold: u64,
    always: bool,
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No span, no header changes, no further work.
    Drop,
    /// Record a span in `trace_id`, child of `parent` (`None`: a root span).
    Record {
        /// The trace the span joins (or starts).
        trace_id: TraceId,
        /// The remote parent span, if any.
        parent: Option<SpanId>,
        /// The header family to answer in.
        format: Format,
    },
}

impl Sampler {
    /// A sampler recording `ratio` of new traces.
    pub fn new(ratio: f64) -> Result<Sampler, RatioError> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(RatioError(ratio));
        }
        // The float-to-int cast saturates; 1.0 is handled by `always`.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let threshold = (ratio * 2f64.powi(64)) as u64;
        Ok(Sampler {
            threshold,
            always: ratio >= 1.0,
        })
    }

    /// Whether this sampler never records anything (ratio 0).
    pub fn is_off(&self) -> bool {
        self.threshold == 0 && !self.always
    }

    fn ratio_says(&self, trace_id: &TraceId) -> bool {
        self.always || trace_id.low_u64() < self.threshold
    }

    /// Decides for a request with `incoming` context.
    pub fn decide(&self, incoming: &Incoming) -> Decision {
        if self.is_off() {
            return Decision::Drop;
        }
        match *incoming {
            Incoming::Parent(p) => {
                let record = match p.sampled {
                    Some(sampled) => sampled,
                    None => self.ratio_says(&p.trace_id),
                };
                if record {
                    Decision::Record {
                        trace_id: p.trace_id,
                        parent: Some(p.span_id),
                        format: p.format,
                    }
                } else {
                    Decision::Drop
                }
            }
            Incoming::Decision(false) => Decision::Drop,
            Incoming::Decision(true) => Decision::Record {
                trace_id: TraceId::random(),
                parent: None,
                format: Format::W3c,
            },
            Incoming::None => {
                let trace_id = TraceId::random();
                if self.ratio_says(&trace_id) {
                    Decision::Record {
                        trace_id,
                        parent: None,
                        format: Format::W3c,
                    }
                } else {
                    Decision::Drop
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::context::Parent;

    fn parent(sampled: Option<bool>) -> Incoming {
        Incoming::Parent(Parent {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([9; 8]),
            sampled,
            format: Format::W3c,
        })
    }

    #[test]
    fn ratio_bounds() {
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(Sampler::new(bad).is_err(), "{bad}");
        }
        assert!(Sampler::new(0.0).unwrap().is_off());
        assert!(!Sampler::new(1e-9).unwrap().is_off());
        assert_eq!(
            RatioError(2.0).to_string(),
            "--trace-sampling must be between 0.0 and 1.0, got 2"
        );
    }

    #[test]
    fn parent_decides() {
        let half = Sampler::new(0.5).unwrap();
        assert_eq!(
            half.decide(&parent(Some(true))),
            Decision::Record {
                trace_id: TraceId([7; 16]),
                parent: Some(SpanId([9; 8])),
                format: Format::W3c
            }
        );
        assert_eq!(half.decide(&parent(Some(false))), Decision::Drop);
        assert_eq!(
            Sampler::new(1.0).unwrap().decide(&parent(Some(false))),
            Decision::Drop
        );
        assert_eq!(half.decide(&Incoming::Decision(false)), Decision::Drop);
        assert!(matches!(
            half.decide(&Incoming::Decision(true)),
            Decision::Record { parent: None, .. }
        ));
    }

    #[test]
    fn zero_records_nothing_even_for_sampled_parents() {
        let off = Sampler::new(0.0).unwrap();
        assert_eq!(off.decide(&parent(Some(true))), Decision::Drop);
        assert_eq!(off.decide(&Incoming::Decision(true)), Decision::Drop);
        assert_eq!(off.decide(&Incoming::None), Decision::Drop);
    }

    #[test]
    fn deferred_parent_uses_the_trace_id() {
        let half = Sampler::new(0.5).unwrap();
        let low = |b: u8| {
            let mut id = [1u8; 16];
            id[8] = b;
            Incoming::Parent(Parent {
                trace_id: TraceId(id),
                span_id: SpanId([1; 8]),
                sampled: None,
                format: Format::B3Multi,
            })
        };
        assert!(matches!(half.decide(&low(0x10)), Decision::Record { .. }));
        assert_eq!(half.decide(&low(0x90)), Decision::Drop);
    }

    #[test]
    fn new_traces_follow_the_ratio() {
        for ratio in [0.1, 0.5, 0.9] {
            let s = Sampler::new(ratio).unwrap();
            let n = 20_000;
            let kept = (0..n)
                .filter(|_| matches!(s.decide(&Incoming::None), Decision::Record { .. }))
                .count();
            let share = kept as f64 / n as f64;
            assert!((share - ratio).abs() < 0.02, "ratio {ratio}: kept {share}");
        }
        let all = Sampler::new(1.0).unwrap();
        assert!((0..1000).all(|_| matches!(
            all.decide(&Incoming::None),
            Decision::Record { parent: None, .. }
        )));
    }
}
