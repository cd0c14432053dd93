//! Humane durations for flags and env vars (`500ms`, `5s`, `2m`, `1m30s`), so
//! operators never have to guess whether a bare number means seconds or millis.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A [`Duration`] that parses from and prints as a humane string such as `5s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumaneDuration(pub Duration);

/// Why a duration string could not be parsed; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationParseError {
    /// The input was empty or only whitespace.
    #[error("empty duration: write a number with a unit, e.g. 500ms, 5s or 2m")]
    Empty,
    /// A number was not followed by a unit.
    #[error("missing unit after {number:?} in {input:?}: use ns, us, ms, s, m or h (e.g. 5s)")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number that lacked a unit.
        number: String,
    },
    /// A unit was not one of the known ones.
    #[error("unknown unit {unit:?} in {input:?}: use ns, us, ms, s, m or h")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// A unit came without a number before it, or some other character was found.
    #[error("expected a number at {rest:?} in {input:?}: write e.g. 500ms, 5s, 2m or 1m30s")]
    ExpectedNumber {
        /// The whole input.
        input: String,
        /// What was left when a number was expected.
        rest: String,
    },
    /// The value does not fit in a duration.
    #[error("duration {input:?} is too large")]
    Overflow {
        /// The whole input.
        input: String,
    },
}

impl HumaneDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumaneDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

/// Nanoseconds per unit, longest unit names first so `ms` wins over `m`.
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

impl FromStr for HumaneDuration {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(DurationParseError::Empty);
        }
        let mut rest = s;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(DurationParseError::ExpectedNumber {
                    input: input.to_owned(),
                    rest: rest.to_owned(),
                });
            }
            let (number, after) = rest.split_at(digits);
            let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
            if unit_len == 0 {
                return Err(DurationParseError::MissingUnit {
                    input: input.to_owned(),
                    number: number.to_owned(),
                });
            }
            let (unit, after) = after.split_at(unit_len);
            let per_unit = UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, nanos)| *nanos)
                .ok_or_else(|| DurationParseError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                })?;
            let overflow = || DurationParseError::Overflow {
                input: input.to_owned(),
            };
            let value: u128 = number.parse().map_err(|_| overflow())?;
            total_nanos = value
                .checked_mul(per_unit)
                .and_then(|n| total_nanos.checked_add(n))
                .ok_or_else(overflow)?;
            rest = after;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| {
            DurationParseError::Overflow {
                input: input.to_owned(),
            }
        })?;
        // The remainder is below 1e9, so it always fits in a u32.
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(Duration::new(secs, nanos)))
    }
}

impl fmt::Display for HumaneDuration {
    /// Prints the duration in the largest unit that represents it exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        let (name, per_unit) = UNITS
            .iter()
            .rev()
            .find(|(_, per_unit)| nanos % per_unit == 0)
            .copied()
            .unwrap_or(("ns", 1));
        write!(f, "{}{}", nanos / per_unit, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Duration, DurationParseError> {
        s.parse::<HumaneDuration>().map(HumaneDuration::get)
    }

    #[test]
    fn parses_common_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse("7ns").unwrap(), Duration::from_nanos(7));
        assert_eq!(parse(" 0s ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn parses_compound_values() {
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1s500ms").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_bad_input_with_helpful_errors() {
        assert_eq!(parse(""), Err(DurationParseError::Empty));
        let err = parse("5").unwrap_err();
        assert!(matches!(err, DurationParseError::MissingUnit { .. }));
        assert!(err.to_string().contains("5s"), "{err}");
        assert!(matches!(
            parse("5 days").unwrap_err(),
            DurationParseError::UnknownUnit { .. } | DurationParseError::MissingUnit { .. }
        ));
        assert!(matches!(
            parse("5d").unwrap_err(),
            DurationParseError::UnknownUnit { .. }
        ));
        assert!(matches!(
            parse("ms").unwrap_err(),
            DurationParseError::ExpectedNumber { .. }
        ));
        assert!(matches!(
            parse("-5s").unwrap_err(),
            DurationParseError::ExpectedNumber { .. }
        ));
        assert!(matches!(
            parse("99999999999999999999999999999999999999999h").unwrap_err(),
            DurationParseError::Overflow { .. }
        ));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        let show = |d: Duration| HumaneDuration(d).to_string();
        assert_eq!(show(Duration::ZERO), "0s");
        assert_eq!(show(Duration::from_millis(500)), "500ms");
        assert_eq!(show(Duration::from_secs(5)), "5s");
        assert_eq!(show(Duration::from_secs(120)), "2m");
        assert_eq!(show(Duration::from_secs(90)), "90s");
        assert_eq!(show(Duration::from_secs(7200)), "2h");
        assert_eq!(show(Duration::from_nanos(1500)), "1500ns");
    }

    #[test]
    fn display_round_trips() {
        for d in [
            Duration::from_millis(1),
            Duration::from_secs(120),
            Duration::from_nanos(123_456_789),
        ] {
            assert_eq!(parse(&HumaneDuration(d).to_string()).unwrap(), d);
        }
    }
}
