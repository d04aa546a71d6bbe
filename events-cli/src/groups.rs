//! `events groups`: the consumers of a stream's groups, and removal of stale ones.

use crate::say;
use std::time::Duration;

use events::Connection;
use events::{dead_letter_stream, remove_stale_consumers_of, stream_stats};

use crate::Failure;

/// Prints each group's consumers; with `remove_stale`, first removes consumers idle that long
/// with nothing pending.
pub(crate) async fn run(
    mut connection: Connection,
    stream: &str,
    remove_stale: Option<Duration>,
) -> Result<(), Failure> {
    let stats = stream_stats(&mut connection, stream, &dead_letter_stream(stream)).await?;
    if stats.groups.is_empty() {
        return Err(format!("stream `{stream}` has no consumer groups").into());
    }
    if let Some(idle) = remove_stale {
        for group in &stats.groups {
            for name in
                remove_stale_consumers_of(connection.clone(), stream, &group.name, idle).await?
            {
                say!("removed consumer {name} of group {}", group.name);
            }
        }
    }
    let stats = stream_stats(&mut connection, stream, &dead_letter_stream(stream)).await?;
    for group in &stats.groups {
        say!("group {}  pending {}", group.name, group.pending);
        for consumer in &group.consumers {
            say!(
                "  {}  pending {}  idle {:.1}s",
                consumer.name,
                consumer.pending,
                consumer.idle.as_secs_f64()
            );
        }
    }
    Ok(())
}
