//! The AsyncAPI document of a service: every reference resolves, channels are the streams the
//! router names, and every message's payload is a JSON Schema its events pass.

use events::{AsyncApi, Event, Route, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "invoice.issued", version = 2)]
struct InvoiceIssued {
    #[event(length(min = 1))]
    number: String,
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "audit.login")]
struct Login {
    #[event(email)]
    user: String,
}

#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "order.placed")]
struct OrderPlaced {
    #[event(uuid)]
    order_id: String,
}

fn router() -> Router {
    Router::builder()
        .route(Route::to("invoice.*", "billing").partitions(4))
        .route(Route::prefixed("audit.*", "audit:"))
        .build()
        .unwrap()
}

fn document() -> Value {
    AsyncApi::new("billing-service", "1.4.0", router())
        .description("Issues invoices for placed orders.")
        .publishes::<InvoiceIssued>()
        .unwrap()
        .publishes::<Login>()
        .unwrap()
        .consumes::<OrderPlaced>("orders")
        .document()
}

/// The value a local `$ref` (`#/a/b`) points at.
fn resolve<'a>(document: &'a Value, reference: &Value) -> &'a Value {
    let pointer = reference["$ref"]
        .as_str()
        .and_then(|reference| reference.strip_prefix('#'))
        .unwrap_or_else(|| panic!("not a local reference: {reference}"));
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} does not resolve"))
}

#[test]
fn every_reference_resolves_and_channels_are_the_routed_streams() {
    let document = document();
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(document["info"]["title"], "billing-service");
    assert_eq!(document["info"]["version"], "1.4.0");
    let id = regex::Regex::new("^[A-Za-z0-9._-]+$").unwrap();
    let mut seen = Vec::new();
    for (name, operation) in document["operations"].as_object().unwrap() {
        assert!(id.is_match(name), "{name}");
        let channel = resolve(&document, &operation["channel"]);
        let messages = operation["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1);
        // The operation's message is one of its channel's, and that one a component.
        let in_channel = resolve(&document, &messages[0]);
        let message = resolve(&document, in_channel);
        seen.push((
            operation["action"].as_str().unwrap().to_owned(),
            channel["address"].as_str().unwrap().to_owned(),
            message["name"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("receive".into(), "orders".into(), "order.placed".into()),
            (
                "send".into(),
                "audit:audit.login".into(),
                "audit.login".into()
            ),
            ("send".into(), "billing".into(), "invoice.issued".into()),
        ] as [(String, String, String); 3]
    );
    for id_of in ["channels", "components/messages"] {
        let keys = document.pointer(&format!("/{id_of}")).unwrap();
        for key in keys.as_object().unwrap().keys() {
            assert!(id.is_match(key), "{key}");
        }
    }
}

#[test]
fn each_payload_is_a_json_schema_its_events_pass() {
    let document = document();
    let messages = &document["components"]["messages"];
    let invoice = &messages["invoice.issued"];
    assert_eq!(invoice["x-event-version"], 2);
    assert_eq!(invoice["contentType"], "application/json");
    let payload = jsonschema::validator_for(&invoice["payload"]).unwrap();
    let issued = serde_json::to_value(InvoiceIssued {
        number: "A-1".into(),
        cents: 100,
    })
    .unwrap();
    assert!(payload.is_valid(&issued));
    assert!(!payload.is_valid(&serde_json::json!({"number": "", "cents": 1})));
    let headers = jsonschema::validator_for(&invoice["headers"]).unwrap();
    let entry = serde_json::json!({
        "id": "0192f0c4-1111-7000-8000-000000000001", "type": "invoice.issued", "v": "2",
        "origin": "billing", "ts": "2026-12-02T10:00:00.000Z", "hash": "0".repeat(64),
        "h.tenant": "acme",
    });
    assert!(headers.is_valid(&entry));
    for message in messages.as_object().unwrap().values() {
        jsonschema::validator_for(&message["payload"]).unwrap();
    }
}

#[test]
fn an_unrouted_event_is_an_error_naming_it() {
    let router = Router::builder()
        .route(Route::to("invoice.*", "billing"))
        .build()
        .unwrap();
    let error = AsyncApi::new("svc", "1", router)
        .publishes::<Login>()
        .unwrap_err();
    assert!(error.to_string().contains("audit.login"), "{error}");
}
