//! `events`: inspect and repair events over Redis Streams from the command line.
//!
//! `events stats <stream>`, `events tail <stream>`, `events dlq list|show|replay|purge <stream>`,
//! `events groups <stream>`, `events serve` (a web admin and HTTP ingestion); the connection comes
//! from `--url` or `REDIS_URL`.

mod admin;
mod dlq;
mod groups;
mod printable;
mod selection;
mod stats;
mod tail;

/// `println!` for lines holding anything read from Redis: control characters in it are shown
/// escaped (see `printable`).
macro_rules! say {
    ($($line:tt)*) => {
        println!("{}", crate::printable::printable(&format!($($line)*)))
    };
}
pub(crate) use say;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use events::Connection;
use selection::Selection;

/// Inspect and repair events over Redis Streams.
#[derive(Debug, Parser)]
#[command(name = "events", version)]
struct Cli {
    /// The Redis to connect to (its password, if any, is never shown, not even in `--help`).
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Length, entries, groups (lag, pending, consumers), dead letters and memory of a stream.
    Stats {
        /// The stream.
        stream: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow the events added to a stream, decoded.
    Tail {
        /// The stream.
        stream: String,
        /// Start after this entry id (`0` for the beginning); new entries only by default.
        #[arg(long, default_value = "$")]
        from: String,
        /// Stop after this many entries.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Inspect, replay and purge a stream's dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The consumers of a stream's groups; remove stale ones.
    Groups {
        /// The stream.
        stream: String,
        /// Remove consumers idle this many seconds or more that have nothing pending.
        #[arg(long, value_name = "SECONDS")]
        remove_stale: Option<u64>,
    },
    /// A web admin (streams, groups, entries, dead letters, /metrics, /health) and HTTP
    /// ingestion of events.
    Serve(admin::Serve),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, a page at a time.
    List {
        /// The stream whose dead letters to list.
        stream: String,
        /// How many to list.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// List those after this dead-letter id (the next page).
        #[arg(long, default_value = "-")]
        after: String,
    },
    /// Show one dead letter with all its fields.
    Show {
        /// The stream whose dead letter to show.
        stream: String,
        /// The dead letter's id.
        id: String,
    },
    /// Write dead letters back to their stream, then remove them from the dead-letter stream.
    Replay {
        /// The stream whose dead letters to replay.
        stream: String,
        #[command(flatten)]
        selection: Selection,
    },
    /// Delete dead letters.
    Purge {
        /// The stream whose dead letters to purge.
        stream: String,
        #[command(flatten)]
        selection: Selection,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// What went wrong, as one line for the operator.
type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            // One line: what was wrong, without clap's usage block (`--help` has it).
            let rendered = error.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", printable::printable(&error.to_string()));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let mut connection = connect(&cli.url).await?;
    match cli.command {
        Command::Stats { stream, json } => stats::run(&mut connection, &stream, json).await,
        Command::Tail {
            stream,
            from,
            count,
        } => tail::run(&mut connection, &stream, &from, count).await,
        Command::Dlq { command } => dlq::run(connection, command).await,
        Command::Groups {
            stream,
            remove_stale,
        } => groups::run(connection, &stream, remove_stale.map(Duration::from_secs)).await,
        Command::Serve(serve) => admin::run(&cli.url, connection, serve).await,
    }
}

/// Connects to `url` (`redis://..` or `redis+cluster://host:port,..`), failing within a few
/// seconds with the address (never the password).
async fn connect(url: &str) -> Result<Connection, Failure> {
    let shown = events::Endpoint::url(url).to_string();
    Connection::open(url, Duration::from_secs(30))
        .await
        .map_err(|error| {
            let reason = match error {
                events::Error::Connect { source } => source.to_string(),
                other => other.to_string(),
            };
            format!("could not connect to Redis at {shown}: {reason}").into()
        })
}
