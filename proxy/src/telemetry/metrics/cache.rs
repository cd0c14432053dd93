//! The response cache's size, read from the proxy's one store when `/metrics` is
//! scraped: how close it is to its bound, at no cost between scrapes.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::policy::cache::store::Store;
use crate::telemetry::process::encode_one;

/// Reads the store's weight and entries at scrape time.
#[derive(Debug)]
struct CacheCollector(Arc<Store>);

/// Registers the gauges of `store`.
pub(crate) fn register(registry: &mut Registry, store: Arc<Store>) {
    registry.register_collector(Box::new(CacheCollector(store)));
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let gauges = [
            (
                "pillion_http_cache_bytes",
                "Bytes of answers (keys, heads, bodies) the response cache holds",
                self.0.weight(),
            ),
            (
                "pillion_http_cache_capacity_bytes",
                "The response cache's bound (--response-cache-bytes)",
                self.0.capacity(),
            ),
            (
                "pillion_http_cache_entries",
                "Entries the response cache holds (answers, variant lists, pass marks)",
                self.0.len() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let value = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            encode_one(&mut encoder, name, help, None, &value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauges_say_what_the_store_holds() {
        let store = Arc::new(Store::new(1 << 20));
        let mut registry = Registry::default();
        register(&mut registry, Arc::clone(&store));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("pillion_http_cache_capacity_bytes 1048576"),
            "{text}"
        );
        assert!(text.contains("pillion_http_cache_bytes 0"), "{text}");
        assert!(text.contains("pillion_http_cache_entries 0"), "{text}");
    }
}
