//! An AsyncAPI 3.0 document of the events a service publishes and consumes: channels are the
//! streams (as the service's router names them), messages the event types with their JSON Schema,
//! their version and the entry fields around the body; operations say which the service sends
//! and which it receives.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::{Event, JsonSchema, Result, Router, event_schema};

/// Collects what a service publishes and consumes, then writes the document. Build it with
/// [`AsyncApi::new`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    router: Router,
    /// Messages by id (the event type).
    messages: BTreeMap<String, Value>,
    /// Streams by channel id, with the ids of their messages.
    channels: BTreeMap<String, (String, Vec<String>)>,
    /// Operations by id.
    operations: BTreeMap<String, Value>,
}

impl AsyncApi {
    /// A document of service `title` at `version` (the service's, not the events'), whose
    /// published events go to the streams `router` names.
    pub fn new(title: impl Into<String>, version: impl Into<String>, router: Router) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            description: None,
            router,
            messages: BTreeMap::new(),
            channels: BTreeMap::new(),
            operations: BTreeMap::new(),
        }
    }

    /// What the service does, for the document's `info`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The service publishes `E`, to the stream its router names for it (the logical stream of a
    /// partitioned route); a type no route takes is an error naming it.
    pub fn publishes<E: Event + JsonSchema>(self) -> Result<Self> {
        let stream = self.router.resolve(E::NAME)?.stream.into_owned();
        Ok(self.operation::<E>("send", &stream))
    }

    /// The service consumes `E` from `stream`.
    pub fn consumes<E: Event + JsonSchema>(self, stream: &str) -> Self {
        self.operation::<E>("receive", stream)
    }

    fn operation<E: Event + JsonSchema>(mut self, action: &str, stream: &str) -> Self {
        let channel = component_id(stream);
        let message = component_id(E::NAME);
        self.messages.insert(message.clone(), message_of::<E>());
        let (_, messages) = self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| (stream.to_owned(), Vec::new()));
        if !messages.contains(&message) {
            messages.push(message.clone());
        }
        let verb = if action == "send" {
            "publish"
        } else {
            "consume"
        };
        self.operations.insert(
            format!("{verb}-{message}-{channel}"),
            json!({
                "action": action,
                "channel": {"$ref": format!("#/channels/{channel}")},
                "messages": [{"$ref": format!("#/channels/{channel}/messages/{message}")}],
            }),
        );
        self
    }

    /// The AsyncAPI 3.0 document, as JSON.
    pub fn document(&self) -> Value {
        let mut info = json!({"title": self.title, "version": self.version});
        if let Some(description) = &self.description {
            info["description"] = description.as_str().into();
        }
        let channels: Map<String, Value> = self
            .channels
            .iter()
            .map(|(id, (stream, messages))| {
                let messages: Map<String, Value> = messages
                    .iter()
                    .map(|message| {
                        let reference = json!({"$ref": format!("#/components/messages/{message}")});
                        (message.clone(), reference)
                    })
                    .collect();
                let channel = json!({
                    "address": stream,
                    "description": format!("The Redis stream `{stream}`."),
                    "messages": messages,
                });
                (id.clone(), channel)
            })
            .collect();
        json!({
            "asyncapi": "3.0.0",
            "info": info,
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": self.operations,
            "components": {"messages": self.messages},
        })
    }
}

/// The message of event `E`: its body's schema as the payload, the entry's other fields as
/// headers.
fn message_of<E: Event + JsonSchema>() -> Value {
    let mut payload = event_schema::<E>();
    if let Value::Object(object) = &mut payload {
        // The document states the schema dialect once, by its version.
        object.remove("$schema");
    }
    json!({
        "name": E::NAME,
        "title": E::NAME,
        "summary": format!("Version {} of `{}`.", E::VERSION, E::NAME),
        "contentType": "application/json",
        "x-event-version": E::VERSION,
        "headers": entry_fields(),
        "payload": payload,
    })
}

/// The fields of a stream entry besides `body`, as this crate writes them.
fn entry_fields() -> Value {
    json!({
        "type": "object",
        "description": "The other fields of the stream entry; the body is the `body` field.",
        "required": ["id", "type", "v", "origin", "ts", "hash"],
        "properties": {
            "id": {"type": "string", "description": "Event id: a UUID (v7)."},
            "type": {"type": "string", "description": "Event type."},
            "v": {"type": "string", "pattern": "^[1-9][0-9]*$", "description": "Schema version."},
            "origin": {"type": "string", "description": "Publishing service."},
            "ts": {"type": "string", "format": "date-time", "description": "Publish time."},
            "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the type, a NUL byte and the body."},
            "corr": {"type": "string", "description": "Correlation id."},
            "cause": {"type": "string", "description": "Causation id."},
            "traceparent": {"type": "string", "description": "W3C trace context."},
            "key": {"type": "string", "description": "Partition key."},
        },
        "patternProperties": {"^h\\.": {"type": "string", "description": "A user header."}},
    })
}

/// `name` as an AsyncAPI component id: letters, digits, `.`, `-` and `_`; anything else becomes
/// `_`.
fn component_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
