//! The event the benchmarks send: an order whose JSON body is 160 bytes.

use events::Event;
use serde::{Deserialize, Serialize};

/// An order; [`OrderPlaced::sample`] serializes to 160 bytes of JSON.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.placed", version = 1)]
pub(crate) struct OrderPlaced {
    #[event(uuid)]
    pub(crate) order_id: String,
    #[event(non_empty)]
    pub(crate) customer: String,
    #[event(email)]
    pub(crate) email: String,
    #[event(range(min = 0.0))]
    pub(crate) total: f64,
    #[event(length(max = 8))]
    pub(crate) skus: Vec<String>,
}

impl OrderPlaced {
    /// Order number `n` (up to 999,999), 160 bytes as JSON.
    pub(crate) fn sample(n: u32) -> Self {
        let order = Self {
            order_id: "0b5a3c1e-8d4f-4a51-9d0e-6b7f1c2d3e4f".into(),
            customer: format!("c-{:06}", n % 1_000_000),
            email: "cust123@example.com".into(),
            total: 1234.5,
            skus: vec!["SKU-0001".into(), "SKU-0002".into(), "SKU-0003".into()],
        };
        debug_assert_eq!(
            serde_json::to_string(&order).map(|json| json.len()).ok(),
            Some(160)
        );
        order
    }
}
