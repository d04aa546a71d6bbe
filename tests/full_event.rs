//! An event and its parts using every attribute of `#[derive(Event)]` and `#[derive(Validate)]`
//! together: it compiles, and keeps its name and version.

use events::{Event, Validate};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Validate)]
struct Line {
    #[event(non_empty, length(max = 32), pattern = "^[A-Z0-9-]+$")]
    sku: String,
    #[event(range(min = 1, max = 1000))]
    quantity: u32,
}

#[derive(Serialize, Deserialize, Validate)]
struct Page<T: Validate> {
    #[event(nested)]
    entries: Vec<T>,
}

fn known_currency(code: &str) -> Result<(), String> {
    match code {
        "EUR" | "USD" => Ok(()),
        other => Err(format!("unknown currency {other}")),
    }
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "order.placed", version = 2)]
struct OrderPlaced {
    #[event(uuid, idempotency_key)]
    order_id: String,
    #[event(email)]
    #[event(length(max = 254))]
    email: String,
    #[event(url)]
    receipt: Option<String>,
    #[event(nested, length(min = 1, max = 100))]
    lines: Vec<Line>,
    #[event(nested)]
    gifts: Option<Vec<Line>>,
    #[event(nested)]
    page: Page<Line>,
    #[event(range(min = 0, max = 1))]
    discount: f64,
    #[event(range(min = -12, max = 14))]
    utc_offset: Option<i8>,
    #[event(custom = known_currency, idempotency_key)]
    currency: String,
    note: String,
}

#[derive(Serialize, Deserialize, Event)]
#[event(name = "ping")]
struct Ping {}

#[test]
fn an_event_using_every_attribute_compiles() {
    assert_eq!(OrderPlaced::NAME, "order.placed");
    assert_eq!(OrderPlaced::VERSION, 2);
    assert_eq!(Ping::VERSION, 1);
    assert!(Ping {}.validate().is_ok());
}
