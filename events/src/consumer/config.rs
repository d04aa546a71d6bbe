//! A consumer's settings, with the defaults a service starts from.

use std::sync::Arc;
use std::time::Duration;

use super::identity::MarkSettings;
use super::middleware::{HandlerLayer, Wrap, wrap};
use super::partitions::Partitioned;
use super::type_names::TypeNames;
use super::{Backoff, Context, DeadLetter, Failure, Identity, RateLimit, StartFrom};

/// What to do with an event whose type has no handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unhandled {
    /// Acknowledge it and count it as skipped: another group or service handles it.
    #[default]
    Skip,
    /// Move it to the dead-letter stream.
    DeadLetter,
}

/// What to do with an event whose version is newer than every handler of its type knows, as when
/// a producer deploys a new version before its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NewerVersions {
    /// Retry it with the backoff, up to the consumer's `max_attempts`, then dead-letter it: a
    /// consumer stopped meanwhile (replaced by a deployment that knows the version) leaves it
    /// pending, and the new one takes it over and handles it.
    #[default]
    Retry,
    /// Dead-letter it at once, as undecodable.
    DeadLetter,
}

/// Settings of one handler that differ from the consumer's.
#[derive(Clone, Default)]
#[must_use]
pub struct HandlerOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) idempotent: Option<bool>,
    pub(crate) identity: Option<Identity>,
    pub(crate) layers: Vec<Wrap>,
    pub(crate) rate_limit: Option<RateLimit>,
}

impl std::fmt::Debug for HandlerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerOptions")
            .field("timeout", &self.timeout)
            .field("idempotent", &self.idempotent)
            .field("identity", &self.identity)
            .field("layers", &self.layers.len())
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl HandlerOptions {
    /// The consumer's settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one attempt of this handler may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether repeats of an event already handled are skipped (on by default).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// What identifies a repeat of an event for this handler, when its type declares no
    /// idempotency key (by default the consumer's choice, itself by default the event id).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Runs this handler at most as often as `limit` says, across every consumer of the group
    /// (see [`RateLimit`]).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Wraps this handler in a tower `layer` (see [`Call`](crate::Call)), inside the consumer's
    /// layers; the first added is the outermost.
    pub fn layer(mut self, layer: impl HandlerLayer) -> Self {
        self.layers.push(wrap(layer));
        self
    }
}

type ErrorHook = Arc<dyn Fn(&Context, &Failure) + Send + Sync>;
type ContextHook = Arc<dyn Fn(&Context) + Send + Sync>;
type DeadLetterHook = Arc<dyn Fn(&DeadLetter) + Send + Sync>;

/// Callbacks around each delivery; they run inline, so keep them quick.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) before: Option<ContextHook>,
    pub(crate) after: Option<ContextHook>,
    pub(crate) on_error: Option<ErrorHook>,
    pub(crate) on_dead_letter: Option<DeadLetterHook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before", &self.before.is_some())
            .field("after", &self.after.is_some())
            .field("on_error", &self.on_error.is_some())
            .field("on_dead_letter", &self.on_dead_letter.is_some())
            .finish()
    }
}

/// Everything a consumer is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) streams: Vec<String>,
    /// Logical streams read as partitions, whose partitions are among `streams`.
    pub(crate) partitioned: Vec<Partitioned>,
    /// How long a consumer holds a partition without renewing its lease.
    pub(crate) partition_lease: Duration,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) start_from: StartFrom,
    pub(crate) batch_size: usize,
    pub(crate) block: Duration,
    pub(crate) concurrency: usize,
    pub(crate) max_unacked: usize,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) handler_timeout: Duration,
    pub(crate) claim_idle: Duration,
    pub(crate) claim_interval: Duration,
    pub(crate) idempotent: bool,
    pub(crate) identity: Identity,
    pub(crate) idempotency_ttl: Duration,
    /// How many fields the server's hashes keep compact (`hash-max-listpack-entries`), read when
    /// the consumer connects.
    pub(crate) listpack_entries: u64,
    pub(crate) unhandled: Unhandled,
    pub(crate) newer_versions: NewerVersions,
    /// The names events are read under.
    pub(crate) type_names: TypeNames,
    pub(crate) dead_letter_stream: Option<String>,
    pub(crate) dead_letter_max_len: u64,
    pub(crate) shutdown_timeout: Duration,
}

impl Settings {
    pub(crate) fn new() -> Self {
        Self {
            streams: Vec::new(),
            partitioned: Vec::new(),
            partition_lease: Duration::from_secs(10),
            group: String::new(),
            consumer: default_consumer_name(),
            start_from: StartFrom::New,
            batch_size: 100,
            block: Duration::from_secs(2),
            concurrency: 64,
            max_unacked: 1_000,
            max_attempts: 5,
            backoff: Backoff::default(),
            handler_timeout: Duration::from_secs(30),
            claim_idle: Duration::from_secs(60),
            claim_interval: Duration::from_secs(5),
            idempotent: true,
            identity: Identity::EventId,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            listpack_entries: 128,
            unhandled: Unhandled::Skip,
            newer_versions: NewerVersions::Retry,
            type_names: TypeNames::default(),
            dead_letter_stream: None,
            dead_letter_max_len: 0,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// After an attempt failed with `failure`, how long to wait before the next; `None` when the
    /// event is to be dead-lettered (the failure is final, or that was the last attempt).
    pub(crate) fn retry_delay(&self, failure: &Failure, attempt: u32) -> Option<Duration> {
        let asked = match failure {
            Failure::Handler(error) => error.retry_delay(),
            _ => None,
        };
        if failure.is_deferral() {
            return asked;
        }
        let retried = match failure {
            Failure::NewerVersion(_) => self.newer_versions == NewerVersions::Retry,
            failure => failure.is_retryable(),
        };
        (retried && attempt < self.max_attempts)
            .then(|| asked.unwrap_or_else(|| self.backoff.delay(attempt)))
    }

    /// Where and for how long the consumer's idempotency marks live.
    pub(crate) fn marks(&self) -> MarkSettings {
        MarkSettings::new(self.idempotency_ttl, self.listpack_entries)
    }

    /// The dead-letter stream of `stream`.
    pub(crate) fn dead_letter_stream(&self, stream: &str) -> String {
        self.dead_letter_stream
            .clone()
            .unwrap_or_else(|| crate::keys::dead_letter_stream(stream))
    }
}

/// `<host>-<pid>`: the same for the life of the process, different between processes.
fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|host| host.trim().to_owned())
        })
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "consumer".into());
    format!("{host}-{}", std::process::id())
}
