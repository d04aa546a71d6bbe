//! `events stats`: a stream's state as a table or JSON.

use crate::say;
use std::time::Duration;

use events::Connection;
use events::{dead_letter_stream, server_stats, stream_stats};

use crate::Failure;

/// Prints the stats of `stream` and of the server.
pub(crate) async fn run(
    connection: &mut Connection,
    stream: &str,
    json: bool,
) -> Result<(), Failure> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(stream)
        .query_async(connection)
        .await?;
    if !exists {
        return Err(format!("stream `{stream}` does not exist").into());
    }
    let stats = stream_stats(connection, stream, &dead_letter_stream(stream)).await?;
    let server = server_stats(connection).await?;
    if json {
        let both = serde_json::json!({ "stream": stats, "server": server });
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(());
    }
    let memory = stats.memory_bytes.map_or_else(|| "?".to_owned(), kib);
    say!(
        "stream        {}  {} entries, {memory}",
        stats.stream,
        stats.length
    );
    for (label, entry) in [
        ("first entry", &stats.first_entry),
        ("last entry", &stats.last_entry),
    ] {
        if let Some(entry) = entry {
            say!(
                "{label:<13} {}  {}",
                entry.id,
                humantime::format_rfc3339_millis(entry.time)
            );
        }
    }
    say!(
        "dead letters  {}  {} entries",
        stats.dead_letter_stream,
        stats.dead_letters
    );
    for group in &stats.groups {
        let lag = group
            .lag
            .map_or_else(|| "?".to_owned(), |lag| lag.to_string());
        let oldest = group
            .oldest_pending_idle
            .map_or_else(|| "-".to_owned(), seconds);
        say!(
            "group         {}  lag {lag}, pending {}, oldest pending idle {oldest}, last delivered {}",
            group.name,
            group.pending,
            group.last_delivered_id
        );
        for consumer in &group.consumers {
            say!(
                "  consumer    {}  pending {}, idle {}",
                consumer.name,
                consumer.pending,
                seconds(consumer.idle)
            );
        }
    }
    let limit = if server.max_memory == 0 {
        "no limit".to_owned()
    } else {
        kib(server.max_memory)
    };
    say!(
        "server        memory {} of {limit}, policy {}",
        kib(server.used_memory),
        server.eviction_policy
    );
    if let Some(warning) = server.warning {
        say!("warning       {warning}");
    }
    Ok(())
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}
