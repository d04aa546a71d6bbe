//! The JSON Schema that `#[derive(Event)]` gives an event's body, checked with a JSON Schema
//! validator as another language would use it: what the struct accepts passes, what its
//! validators refuse fails at the same field, serde's names and presence rules hold.

use std::collections::BTreeMap;

use events::{Event, JsonSchema, Validate, event_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
struct Line {
    #[event(length(min = 1, max = 20))]
    sku: String,
    #[event(range(min = 1, max = 99))]
    quantity: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize, Validate)]
struct Audit {
    #[event(non_empty)]
    actor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.placed", version = 3)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OrderPlaced {
    #[event(uuid)]
    order_id: String,
    #[event(email)]
    customer_email: String,
    #[event(url)]
    receipt_url: Option<String>,
    #[event(pattern = "^[A-Z]{3}$")]
    currency: String,
    #[event(range(min = -10.5, max = 1000))]
    discount: f64,
    #[event(nested, length(min = 1, max = 3))]
    lines: Vec<Line>,
    #[serde(rename = "note")]
    #[event(length(max = 140))]
    remark: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(skip)]
    internal: u32,
    /// A type without a schema of its own: any JSON.
    extra: Option<Opaque>,
}

/// Serializes as it likes; this crate knows nothing of its shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opaque(Vec<u8>);

fn order() -> OrderPlaced {
    OrderPlaced {
        order_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
        customer_email: "ada@example.com".into(),
        receipt_url: Some("https://shop.example/r/1".into()),
        currency: "EUR".into(),
        discount: 0.5,
        lines: vec![Line {
            sku: "A-1".into(),
            quantity: 2,
        }],
        remark: None,
        tags: BTreeMap::new(),
        internal: 7,
        extra: None,
    }
}

fn validator() -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&event_schema::<OrderPlaced>())
        .expect("the derived schema is a valid JSON Schema")
}

#[test]
fn the_schema_states_names_types_presence_and_constraints() {
    let schema = event_schema::<OrderPlaced>();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(
        (&schema["title"], &schema["x-event-version"]),
        (&json!("order.placed"), &json!(3))
    );
    let properties = &schema["properties"];
    let names: Vec<&String> = properties.as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        [
            "currency",
            "customerEmail",
            "discount",
            "extra",
            "lines",
            "note",
            "orderId",
            "receiptUrl",
            "tags"
        ]
    );
    assert_eq!(
        schema["required"],
        json!(["orderId", "customerEmail", "currency", "discount", "lines"])
    );
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        properties["orderId"],
        json!({"type": "string", "format": "uuid"})
    );
    assert_eq!(
        properties["receiptUrl"],
        json!({"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}]})
    );
    assert_eq!(
        properties["discount"],
        json!({"type": "number", "minimum": -10.5, "maximum": 1000})
    );
    assert_eq!(properties["lines"]["minItems"], 1);
    assert_eq!(properties["lines"]["maxItems"], 3);
    assert_eq!(
        properties["lines"]["items"]["properties"]["quantity"],
        json!({"type": "integer", "minimum": 1, "maximum": 99})
    );
    assert_eq!(
        properties["extra"],
        json!({"anyOf": [{}, {"type": "null"}]})
    );
    assert_eq!(Line::json_schema()["required"], json!(["sku", "quantity"]));
}

#[test]
fn what_the_struct_writes_passes() {
    let validator = validator();
    let mut full = order();
    full.remark = Some("leave at the door".into());
    full.tags.insert("channel".into(), "web".into());
    full.extra = Some(Opaque(vec![1, 2]));
    for body in [order(), full] {
        let value = serde_json::to_value(&body).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|error| error.to_string())
            .collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
        assert!(body.validate().is_ok());
    }
}

#[test]
fn what_the_validators_refuse_the_schema_refuses_at_the_same_field() {
    let validator = validator();
    let base = serde_json::to_value(order()).unwrap();
    let cases: [(&str, Value, &str); 10] = [
        ("orderId", json!("not-a-uuid"), "/orderId"),
        ("customerEmail", json!("nobody"), "/customerEmail"),
        ("receiptUrl", json!("not a url"), "/receiptUrl"),
        ("currency", json!("euro"), "/currency"),
        ("discount", json!(-11), "/discount"),
        ("lines", json!([]), "/lines"),
        ("lines", json!([{"sku": "", "quantity": 1}]), "/lines/0/sku"),
        (
            "lines",
            json!([{"sku": "A", "quantity": 100}]),
            "/lines/0/quantity",
        ),
        ("note", json!("x".repeat(141)), "/note"),
        ("surprise", json!(1), ""),
    ];
    for (field, value, at) in cases {
        let mut body = base.clone();
        body[field] = value;
        let paths: Vec<String> = validator
            .iter_errors(&body)
            .map(|error| error.instance_path().to_string())
            .collect();
        assert!(paths.contains(&at.to_owned()), "{field}: {paths:?}");
        // The struct refuses it too: it does not deserialize, or does not validate.
        let refused = serde_json::from_value::<OrderPlaced>(body).map_or(true, |order| {
            order.internal == 0 && order.validate().is_err()
        });
        assert!(refused, "{field}");
    }
    let mut missing = base;
    missing.as_object_mut().unwrap().remove("orderId");
    assert!(!validator.is_valid(&missing));
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "order.shipped")]
struct Shipped {
    carrier: String,
    #[serde(flatten)]
    #[event(nested)]
    audit: Audit,
}

#[test]
fn flattened_fields_are_the_structs_own() {
    let schema = event_schema::<Shipped>();
    assert_eq!(schema["required"], json!(["carrier", "actor"]));
    assert_eq!(
        schema["properties"]["actor"],
        json!({"type": "string", "minLength": 1, "pattern": "\\S"})
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&json!({"carrier": "dhl", "actor": "ops"})));
    let blank = json!({"carrier": "dhl", "actor": "  "});
    assert!(!validator.is_valid(&blank));
    let shipped: Shipped = serde_json::from_value(blank).unwrap();
    assert!(shipped.validate().is_err());
}

/// The names an event's schema gives its properties and the keys serde writes for it, when serde
/// names its fields by the `rename_all` rule `$rule`.
macro_rules! names_under {
    ($rule:tt) => {{
        #[derive(Serialize, Deserialize, Event)]
        #[event(name = "names.checked")]
        #[serde(rename_all = $rule)]
        struct Named {
            user_id: u32,
            home_page_url: String,
        }
        let named = Named {
            user_id: 1,
            home_page_url: String::new(),
        };
        let written = serde_json::to_value(&named).unwrap();
        (keys(&event_schema::<Named>()["properties"]), keys(&written))
    }};
}

fn keys(object: &Value) -> Vec<String> {
    object.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_schema_names_fields_as_serde_does_under_every_rule() {
    for (rule, (in_schema, written)) in [
        ("lowercase", names_under!("lowercase")),
        ("UPPERCASE", names_under!("UPPERCASE")),
        ("PascalCase", names_under!("PascalCase")),
        ("camelCase", names_under!("camelCase")),
        ("snake_case", names_under!("snake_case")),
        ("SCREAMING_SNAKE_CASE", names_under!("SCREAMING_SNAKE_CASE")),
        ("kebab-case", names_under!("kebab-case")),
        ("SCREAMING-KEBAB-CASE", names_under!("SCREAMING-KEBAB-CASE")),
    ] {
        assert_eq!(in_schema, written, "{rule}");
    }
}

fn zero() -> u32 {
    0
}

/// A field serde reads and writes under different names, with a default, and an `Option` named
/// by its full path.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(name = "reading.taken")]
struct ReadingTaken {
    #[serde(rename(serialize = "out", deserialize = "in"), default = "zero")]
    value: u32,
    #[event(range(max = 10))]
    level: std::option::Option<u8>,
    unit: String,
}

#[test]
fn the_schema_describes_what_serde_reads() {
    let schema = event_schema::<ReadingTaken>();
    assert_eq!(keys(&schema["properties"]), ["in", "level", "unit"]);
    assert_eq!(schema["required"], json!(["unit"]));
    assert_eq!(
        schema["properties"]["level"],
        json!({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 10}, {"type": "null"}]})
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    let read = json!({"in": 3, "unit": "kPa"});
    assert!(validator.is_valid(&read));
    let reading: ReadingTaken = serde_json::from_value(read).unwrap();
    assert_eq!((reading.value, reading.level), (3, None));
    assert_eq!(reading.validate(), Ok(()));
    let too_high = ReadingTaken {
        level: Some(11),
        ..reading
    };
    assert!(!validator.is_valid(&json!({"unit": "kPa", "level": 11})));
    assert_eq!(too_high.validate().unwrap_err().errors()[0].path, "level");
}
