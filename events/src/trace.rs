//! W3C trace context carried by events, so that a trace crosses services: a consumer runs each
//! handler in the context of the event's `traceparent`, and an event published from inside a
//! handler carries a child of it.

use std::fmt;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` unless it is version `00` with non-zero ids.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let context = Self {
            trace_id: hex_array(trace)?,
            parent_id: hex_array(parent)?,
            flags: hex_array::<1>(flags)?[0],
        };
        let zero = context.trace_id == [0; 16] || context.parent_id == [0; 8];
        (!zero).then_some(context)
    }

    /// The trace's id, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// A context for a new span in the same trace, whose parent is this one.
    pub fn child(&self) -> Self {
        // A version 7 UUID ends with random bits (its start is the time).
        let random = uuid::Uuid::now_v7().into_bytes();
        let mut parent_id = [0; 8];
        parent_id.copy_from_slice(&random[8..]);
        parent_id[0] |= 1;
        Self { parent_id, ..*self }
    }

    /// The context of the handler running on this task, if it runs for an event that carried one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|context| *context).ok()
    }

    /// Runs `future` with `self` as the current context.
    pub(crate) async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    {
        return None;
    }
    let mut bytes = [0; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_traceparent() {
        let context = TraceContext::parse(SAMPLE).unwrap();
        assert_eq!(context.to_string(), SAMPLE);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_parent() {
        let context = TraceContext::parse(SAMPLE).unwrap();
        let child = context.child();
        assert_eq!(child.trace_id(), context.trace_id());
        assert_ne!(child.to_string(), context.to_string());
        assert!(child.to_string().ends_with("-01"));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_current_context_is_the_scope_s() {
        assert_eq!(TraceContext::current(), None);
        let context = TraceContext::parse(SAMPLE).unwrap();
        let inside = context.scope(async { TraceContext::current() }).await;
        assert_eq!(inside, Some(context));
    }
}
