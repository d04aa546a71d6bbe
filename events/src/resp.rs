//! Arguments and replies of stream commands: durations as milliseconds, commands packed as RESP,
//! and entries parsed from RESP2 arrays and RESP3 maps alike, without failing on an odd one.

use std::time::Duration;

use redis::Value;

use crate::StreamEntry;

/// A duration as whole milliseconds, the unit of every stream command.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Appends the command of `arguments` to `out` as RESP sends it: an array of bulk strings.
pub(crate) fn pack_command(arguments: &[impl AsRef<str>], out: &mut Vec<u8>) {
    push_header(out, b'*', arguments.len());
    for argument in arguments {
        push_bulk(out, argument.as_ref().as_bytes());
    }
}

/// Appends `bytes` as a RESP bulk string.
pub(crate) fn push_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    push_header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Appends a RESP header line: `kind`, then `number` in decimal, then CRLF.
pub(crate) fn push_header(out: &mut Vec<u8>, kind: u8, number: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The items of an array, set or map (keys and values in turn); nothing for anything else.
pub(crate) fn into_array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(key, value)| [key, value])
            .collect(),
        _ => Vec::new(),
    }
}

/// The bytes of a string or number reply.
pub(crate) fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(number) => Some(number.to_string().into_bytes()),
        _ => None,
    }
}

/// A string or number reply as text.
pub(crate) fn into_string(value: Value) -> Option<String> {
    into_bytes(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

/// A number reply, or a string holding one.
pub(crate) fn into_u64(value: Value) -> Option<u64> {
    match value {
        Value::Int(number) => u64::try_from(number).ok(),
        other => into_string(other)?.parse().ok(),
    }
}

/// `XREADGROUP`'s reply: per stream, its entries; RESP2 arrays and RESP3 maps alike.
pub(crate) fn parse_read_reply(reply: Value) -> Vec<(String, Vec<StreamEntry>)> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        other => into_array(other)
            .into_iter()
            .filter_map(|stream| {
                let mut parts = into_array(stream).into_iter();
                Some((parts.next()?, parts.next()?))
            })
            .collect(),
    };
    streams
        .into_iter()
        .filter_map(|(name, entries)| Some((into_string(name)?, parse_entries(entries))))
        .collect()
}

/// A list of `[id, [field, value, ..]]` entries. Entries whose fields are nil (deleted while
/// pending) come back with no fields.
pub(crate) fn parse_entries(value: Value) -> Vec<StreamEntry> {
    into_array(value)
        .into_iter()
        .filter_map(parse_entry)
        .collect()
}

/// One `[id, [field, value, ..]]` entry.
pub(crate) fn parse_entry(value: Value) -> Option<StreamEntry> {
    let mut parts = into_array(value).into_iter();
    let id = into_string(parts.next()?)?;
    Some(StreamEntry {
        id,
        fields: parse_fields(parts.next().unwrap_or(Value::Nil)),
    })
}

/// A flat `[field, value, ..]` list as pairs.
pub(crate) fn parse_fields(value: Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut flat = into_array(value).into_iter();
    let mut fields = Vec::with_capacity(flat.len() / 2);
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        fields.push((
            into_bytes(name).unwrap_or_default(),
            into_bytes(value).unwrap_or_default(),
        ));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn parses_resp2_read_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("type"), bulk("a.b")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let parsed = parse_read_reply(reply);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, "s");
        assert_eq!(
            parsed[0].1[0].fields,
            vec![(b"type".to_vec(), b"a.b".to_vec())]
        );
        assert_eq!(
            parsed[0].1[1],
            StreamEntry {
                id: "2-0".into(),
                fields: Vec::new()
            }
        );
    }

    #[test]
    fn parses_resp3_read_replies_and_timeouts() {
        let reply = Value::Map(vec![(
            bulk("s"),
            Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Array(vec![])])]),
        )]);
        assert_eq!(parse_read_reply(reply)[0].1[0].id, "1-0");
        assert!(parse_read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn commands_are_packed_as_redis_rs_packs_them() {
        let long = "x".repeat(12_345);
        let commands: [&[&str]; 3] = [
            &[
                "XADD",
                "orders",
                "*",
                "body",
                "{\"a\":\"é\\r\\n\"}",
                "",
                "0",
            ],
            &["PING"],
            &["SET", "k", &long],
        ];
        let mut packed = Vec::new();
        let mut pipeline = redis::pipe();
        for arguments in commands {
            pack_command(arguments, &mut packed);
            pipeline.cmd(arguments[0]).arg(&arguments[1..]);
        }
        assert_eq!(packed, pipeline.get_packed_pipeline());
    }

    #[test]
    fn numbers_come_as_integers_or_strings() {
        assert_eq!(into_u64(Value::Int(7)), Some(7));
        assert_eq!(into_u64(bulk("12")), Some(12));
        assert_eq!(into_u64(Value::Int(-1)), None);
        assert_eq!(millis(Duration::from_micros(2_500)), 2);
    }
}
