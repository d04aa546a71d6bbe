//! Writes the AsyncAPI 3.0 document of a small billing service to standard output:
//! `cargo run --example asyncapi > asyncapi.json`.

use events::{AsyncApi, Event, Route, Router};
use serde::{Deserialize, Serialize};

/// An invoice was issued for an order.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "invoice.issued", version = 2)]
struct InvoiceIssued {
    #[event(pattern = "^INV-[0-9]{6}$")]
    number: String,
    #[event(uuid)]
    order_id: String,
    #[event(range(min = 1))]
    cents: u64,
    #[event(email)]
    customer_email: String,
}

/// A customer placed an order (published by the shop, consumed here).
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    #[event(uuid)]
    order_id: String,
    #[event(length(min = 1, max = 100))]
    lines: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::builder()
        .route(Route::to("invoice.*", "billing").partitions(4))
        .build()?;
    let document = AsyncApi::new("billing-service", "1.4.0", router)
        .description("Issues an invoice for every placed order.")
        .publishes::<InvoiceIssued>()?
        .consumes::<OrderPlaced>("orders")
        .document();
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}
