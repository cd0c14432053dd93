//! Traffic splitting: choose one of a route's backends by weight, and find the
//! endpoints a backend's label subset selects.
//!
//! [`Split`] keeps cumulative weights, so a pick is one multiply and a binary search;
//! subsets are resolved with [`labels_match`] once per view, not per request.

use std::collections::BTreeMap;

use pillion_api::policy::WeightedBackend;

/// Weights that cannot form a split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SplitError {
    /// No backend has a positive weight, so nothing could be picked.
    #[error("no backend has a positive weight")]
    NoWeight,
    /// The weights add up to more than `u32::MAX`.
    #[error("backend weights add up to more than {}", u32::MAX)]
    TooLarge,
}

/// A weighted choice among a route's backends, built once per view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split {
    /// `cumulative[i]` = sum of the weights of backends `0..=i`.
    cumulative: Box<[u32]>,
}

impl Split {
    /// A split over `weights`; zero weights are kept (their backend is never picked)
    /// so indices stay those of the route's backend list.
    pub(crate) fn new(weights: impl IntoIterator<Item = u32>) -> Result<Split, SplitError> {
        let mut total: u32 = 0;
        let mut cumulative = Vec::new();
        for weight in weights {
            total = total.checked_add(weight).ok_or(SplitError::TooLarge)?;
            cumulative.push(total);
        }
        if total == 0 {
            return Err(SplitError::NoWeight);
        }
        Ok(Split {
            cumulative: cumulative.into_boxed_slice(),
        })
    }

    /// The split of a route's backends; a route without backends gets [`Split::single`]
    /// (index 0 then stands for all of the service's endpoints).
    pub(crate) fn from_backends(backends: &[WeightedBackend]) -> Result<Split, SplitError> {
        if backends.is_empty() {
            return Ok(Split::single());
        }
        Split::new(backends.iter().map(|b| b.weight))
    }

    /// A split with one backend that always wins.
    pub(crate) fn single() -> Split {
        Split {
            cumulative: Box::new([1]),
        }
    }

    /// Number of backends, zero-weight ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// The backend index for a uniformly random `rng`: backend `i` wins with
    /// probability `weight[i] / total` (off by at most `total / 2^32`).
    pub(crate) fn pick(&self, rng: u32) -> usize {
        if self.cumulative.len() == 1 {
            return 0;
        }
        let total = self.cumulative[self.cumulative.len() - 1];
        // Scale into 0..total without a division: (rng * total) / 2^32.
        let point = ((u64::from(rng) * u64::from(total)) >> 32) as u32;
        self.cumulative.partition_point(|&c| c <= point)
    }
}

/// True when an endpoint's labels carry every label of `subset` with the same value;
/// an empty subset selects every endpoint.
pub(crate) fn labels_match(
    subset: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    subset
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillion_api::view::Endpoint;

    /// Indices of the endpoints `subset` selects, in order.
    fn endpoints_matching<'a>(
        subset: &'a BTreeMap<String, String>,
        endpoints: &'a [Endpoint],
    ) -> impl Iterator<Item = usize> + 'a {
        endpoints
            .iter()
            .enumerate()
            .filter(move |(_, e)| labels_match(subset, &e.labels))
            .map(|(i, _)| i)
    }

    /// xorshift32: a deterministic stand-in for the proxy's random source.
    fn rng(seed: u32) -> impl FnMut() -> u32 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        }
    }

    fn shares(split: &Split, samples: usize) -> Vec<f64> {
        let mut next = rng(0x9e37_79b9);
        let mut counts = vec![0usize; split.len()];
        for _ in 0..samples {
            counts[split.pick(next())] += 1;
        }
        counts
            .into_iter()
            .map(|c| c as f64 / samples as f64)
            .collect()
    }

    #[test]
    fn ninety_ten_within_one_percent_over_100k() {
        let split = Split::new([90, 10]).unwrap();
        let s = shares(&split, 100_000);
        assert!((s[0] - 0.90).abs() < 0.01, "{s:?}");
        assert!((s[1] - 0.10).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn three_way_split_and_zero_weights_never_win() {
        let split = Split::new([50, 0, 30, 20, 0]).unwrap();
        let s = shares(&split, 100_000);
        for (got, want) in s.iter().zip([0.5, 0.0, 0.3, 0.2, 0.0]) {
            assert!((got - want).abs() < 0.01, "{s:?}");
        }
        assert_eq!(s[1], 0.0);
        assert_eq!(s[4], 0.0);
    }

    #[test]
    fn extremes_of_rng_land_on_the_ends() {
        let split = Split::new([1, 1, 1]).unwrap();
        assert_eq!(split.pick(0), 0);
        assert_eq!(split.pick(u32::MAX), 2);
        let lopsided = Split::new([0, u32::MAX]).unwrap();
        assert_eq!(lopsided.pick(0), 1);
        assert_eq!(lopsided.pick(u32::MAX), 1);
    }

    #[test]
    fn invalid_weights_are_refused() {
        assert_eq!(Split::new([]), Err(SplitError::NoWeight));
        assert_eq!(Split::new([0, 0]), Err(SplitError::NoWeight));
        assert_eq!(Split::new([u32::MAX, 1]), Err(SplitError::TooLarge));
    }

    #[test]
    fn routes_without_backends_use_one_implicit_backend() {
        let split = Split::from_backends(&[]).unwrap();
        assert_eq!(split.len(), 1);
        assert_eq!(split.pick(12345), 0);
        let backends = [
            WeightedBackend {
                weight: 3,
                ..WeightedBackend::default()
            },
            WeightedBackend {
                weight: 1,
                ..WeightedBackend::default()
            },
        ];
        assert_eq!(
            Split::from_backends(&backends).unwrap(),
            Split::new([3, 1]).unwrap()
        );
    }

    fn endpoint(last: u8, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            address: [198, 18, 0, last].into(),
            port: 8080,
            identity: None,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn subsets_select_endpoints_by_labels() {
        let endpoints = [
            endpoint(1, &[("version", "v1"), ("zone", "a")]),
            endpoint(2, &[("version", "v2"), ("zone", "a")]),
            endpoint(3, &[("version", "v1"), ("zone", "b")]),
            endpoint(4, &[]),
        ];
        let subset = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let v1 = subset(&[("version", "v1")]);
        assert_eq!(
            endpoints_matching(&v1, &endpoints).collect::<Vec<_>>(),
            [0, 2]
        );
        let v1b = subset(&[("version", "v1"), ("zone", "b")]);
        assert_eq!(
            endpoints_matching(&v1b, &endpoints).collect::<Vec<_>>(),
            [2]
        );
        let all = subset(&[]);
        assert_eq!(
            endpoints_matching(&all, &endpoints).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let none = subset(&[("version", "v3")]);
        assert_eq!(endpoints_matching(&none, &endpoints).count(), 0);
    }
}
