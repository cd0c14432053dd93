//! The one way Pillion writes a duration: flags, environment variables, the agent's
//! YAML, the CRDs and the wire all take whole numbers with units (`500ms`, `10s`, `2m`,
//! `1h30m`, `1d`) and print a duration in the largest unit that shows it exactly, so
//! what a program prints can be pasted back wherever a duration is asked for.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units by name with their length in nanoseconds, shortest first (printing walks them
/// from the end to find the largest exact unit).
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// What a user is told to write instead.
const EXAMPLE: &str = "write a whole number with a unit, e.g. 500ms, 10s, 2m, 1h or 1d";

/// Why a duration did not parse; each message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but whitespace.
    #[error("empty duration: {EXAMPLE}")]
    Empty,
    /// A number without a unit after it (bare numbers are ambiguous).
    #[error("{input:?} has no unit after {number}: use ns, us, ms, s, m, h or d (e.g. {number}s)")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number that lacked a unit.
        number: String,
    },
    /// A unit that is not one of the known ones.
    #[error("{input:?} has an unknown unit {unit:?}: use ns, us, ms, s, m, h or d")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// Something other than a number where a number must stand (a sign, a fraction,
    /// a space, a unit alone).
    #[error("{input:?} is not a duration: expected a number at {rest:?}; {EXAMPLE}")]
    ExpectedNumber {
        /// The whole input.
        input: String,
        /// What was left when a number was expected.
        rest: String,
    },
    /// More than a duration holds.
    #[error("{input:?} is too large for a duration")]
    Overflow {
        /// The whole input.
        input: String,
    },
}

/// Parses `500ms`, `10s`, `1m30s`, `1d`: whole numbers each followed by a unit
/// (`ns`, `us`, `ms`, `s`, `m`, `h`, `d`); surrounding whitespace is ignored.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(DurationError::Empty);
    }
    let overflow = || DurationError::Overflow {
        input: input.to_owned(),
    };
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::ExpectedNumber {
                input: input.to_owned(),
                rest: rest.to_owned(),
            });
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(DurationError::MissingUnit {
                input: input.to_owned(),
                number: number.to_owned(),
            });
        }
        let (unit, after) = after.split_at(unit_len);
        let per_unit = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, nanos)| *nanos)
            .ok_or_else(|| DurationError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            })?;
        let value: u128 = number.parse().map_err(|_| overflow())?;
        total = value
            .checked_mul(per_unit)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(overflow)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| overflow())?;
    // The remainder is below 1e9, so it fits in a u32.
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| overflow())?;
    Ok(Duration::new(secs, nanos))
}

/// A [`Duration`] that parses and prints the humane way; the type of every duration
/// flag and of durations in the agent's source and the view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumaneDuration(pub Duration);

impl HumaneDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumaneDuration {
    fn from(d: Duration) -> Self {
        HumaneDuration(d)
    }
}

impl From<HumaneDuration> for Duration {
    fn from(d: HumaneDuration) -> Self {
        d.0
    }
}

impl FromStr for HumaneDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input).map(HumaneDuration)
    }
}

impl fmt::Display for HumaneDuration {
    /// The largest unit that shows the duration exactly: `2m`, `90s`, `1500ms`, `0s`.
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
        write!(f, "{}{name}", nanos / per_unit)
    }
}

impl Serialize for HumaneDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads strings; a bare number (YAML's `timeout: 2`) is refused with what to write.
struct Visitor;

impl serde::de::Visitor<'_> for Visitor {
    type Value = HumaneDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, like 250ms, 2s or 1m")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumaneDuration, E> {
        parse(s).map(HumaneDuration).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumaneDuration, E> {
        Err(E::custom(format!(
            "invalid duration {v}: a bare number has no unit (write e.g. {v}ms or {v}s)"
        )))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumaneDuration, E> {
        Err(E::custom(format!(
            "invalid duration {v}: write a positive whole number with a unit, like 250ms"
        )))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<HumaneDuration, E> {
        Err(E::custom(format!(
            "invalid duration {v}: write a whole number with a unit, like 1500ms for 1.5s"
        )))
    }
}

impl<'de> Deserialize<'de> for HumaneDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Visitor)
    }
}

/// `#[serde(with = "pillion_api::duration::serde_humane")]` for a plain [`Duration`].
pub mod serde_humane {
    use super::*;

    /// Writes the duration the humane way.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        HumaneDuration(*d).serialize(s)
    }

    /// Reads a humane duration; bare numbers are refused.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        HumaneDuration::deserialize(d).map(HumaneDuration::get)
    }
}

/// `#[serde(with = "pillion_api::duration::serde_humane_opt")]` for an `Option<Duration>`.
pub mod serde_humane_opt {
    use super::*;

    /// Writes the duration the humane way, or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(HumaneDuration).serialize(s)
    }

    /// Reads an optional humane duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<HumaneDuration>::deserialize(d)?.map(HumaneDuration::get))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(d: Duration) -> String {
        HumaneDuration(d).to_string()
    }

    #[test]
    fn parses_what_users_write() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse(" 0s "), Ok(Duration::ZERO));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1d12h"), Ok(Duration::from_secs(129_600)));
    }

    #[test]
    fn refuses_with_what_to_write_instead() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        let err = parse("5").unwrap_err();
        assert!(matches!(err, DurationError::MissingUnit { .. }));
        assert!(err.to_string().contains("5s"), "{err}");
        assert!(matches!(
            parse("5 days").unwrap_err(),
            DurationError::MissingUnit { .. }
        ));
        assert!(matches!(
            parse("2 s").unwrap_err(),
            DurationError::MissingUnit { .. }
        ));
        assert!(matches!(
            parse("5w").unwrap_err(),
            DurationError::UnknownUnit { .. }
        ));
        for bad in ["1.5s", "1,5s", "5s-"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["ms", "-5s", "+1s", "s5"] {
            assert!(
                matches!(parse(bad), Err(DurationError::ExpectedNumber { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse("99999999999999999999999999999999999999999h").unwrap_err(),
            DurationError::Overflow { .. }
        ));
        assert!(matches!(
            parse("99999999999999999999s").unwrap_err(),
            DurationError::Overflow { .. }
        ));
    }

    #[test]
    fn prints_in_the_largest_exact_unit() {
        assert_eq!(show(Duration::ZERO), "0s");
        assert_eq!(show(Duration::from_millis(500)), "500ms");
        assert_eq!(show(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show(Duration::from_secs(5)), "5s");
        assert_eq!(show(Duration::from_secs(90)), "90s");
        assert_eq!(show(Duration::from_secs(120)), "2m");
        assert_eq!(show(Duration::from_secs(7200)), "2h");
        assert_eq!(show(Duration::from_secs(86_400)), "1d");
        assert_eq!(show(Duration::from_nanos(1500)), "1500ns");
    }

    #[test]
    fn printing_round_trips() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(3),
            Duration::from_millis(1500),
            Duration::from_secs(120),
            Duration::from_secs(366 * 86_400),
            Duration::from_nanos(123_456_789),
        ] {
            assert_eq!(parse(&show(d)), Ok(d));
        }
    }

    #[test]
    fn serde_takes_strings_only() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct T {
            #[serde(with = "serde_humane")]
            a: Duration,
            #[serde(default, with = "serde_humane_opt")]
            b: Option<Duration>,
        }
        let t: T = serde_json::from_str(r#"{"a": "2m", "b": "1d"}"#).unwrap();
        assert_eq!(
            t,
            T {
                a: Duration::from_secs(120),
                b: Some(Duration::from_secs(86_400))
            }
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"a":"2m","b":"1d"}"#);
        let err = serde_json::from_str::<T>(r#"{"a": 2}"#).unwrap_err();
        assert!(err.to_string().contains("no unit"), "{err}");
        assert!(serde_json::from_str::<T>(r#"{"a": -2}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a": 1.5}"#).is_err());
        let err = serde_json::from_str::<T>(r#"{"a": "2"}"#).unwrap_err();
        assert!(err.to_string().contains("2s"), "{err}");
        let none: T = serde_json::from_str(r#"{"a": "1s"}"#).unwrap();
        assert_eq!(none.b, None);
    }
}
