//! Rate limits on handlers, shared by every consumer of a group through Redis: a handler with
//! [`RateLimit`] runs at most `events` times per `period` (per key, when it has one) across all of
//! them. An event waits for its place before it takes a handler slot, kept meanwhile; the wait is
//! counted as `limited`, never as a failure or an attempt. One task per consumer asks Redis for the
//! places of every event waiting meanwhile, one script call per limit.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tokio_util::task::AbortOnDropHandle;

use super::Context;
use super::batcher::{Answering, Batcher};
use crate::connection::Connection;
use crate::{Error, Result};

static RATE_LIMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../lua/rate_limit.lua")));

/// The fastest limit: a million events a second.
const FASTEST: Duration = Duration::from_micros(1);

/// The longest period.
const LONGEST_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Picks the key an event's budget is kept under.
type KeyOf = Arc<dyn Fn(&Context) -> Option<String> + Send + Sync>;

/// At most `events` per `period` for a handler, across every consumer of its group; per key
/// with [`per`](Self::per) (such as a tenant header), a budget each.
#[derive(Clone)]
pub struct RateLimit {
    events: u32,
    period: Duration,
    burst: u32,
    key_of: Option<KeyOf>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("events", &self.events)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .field("per_key", &self.key_of.is_some())
            .finish()
    }
}

impl RateLimit {
    /// At most `events` per `period`, spread evenly (a burst of one). Checked when the consumer is
    /// built: zero events, a zero period, a period over a day or more than a million events a
    /// second are errors there.
    pub fn new(events: u32, period: Duration) -> Self {
        Self {
            events,
            period,
            burst: 1,
            key_of: None,
        }
    }

    /// Lets up to `burst` events go at once before the spacing applies (at least 1, at most
    /// `events`).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// A budget per key: `key_of` reads it from the event (such as `context.header("tenant")`);
    /// events without one share a budget.
    pub fn per(
        mut self,
        key_of: impl Fn(&Context) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key_of = Some(Arc::new(key_of));
        self
    }

    /// The time between two events; an error naming `handler` for a limit that cannot work.
    pub(crate) fn interval(&self, handler: &str) -> Result<Duration> {
        let fail = |reason: String| {
            Err(Error::Config(format!(
                "the rate limit of the handler of `{handler}`: {reason}"
            )))
        };
        if self.events == 0 || self.period.is_zero() {
            return fail("zero events or a zero period lets nothing through".into());
        }
        if self.period > LONGEST_PERIOD {
            return fail(format!("a period of {:?} is over a day", self.period));
        }
        let interval = self.period / self.events;
        if interval < FASTEST {
            return fail(format!(
                "{} events per {:?} is over a million a second",
                self.events, self.period
            ));
        }
        if self.burst == 0 || self.burst > self.events {
            return fail(format!(
                "a burst of {} is not between 1 and the {} events",
                self.burst, self.events
            ));
        }
        Ok(interval)
    }

    /// The Redis key of `context`'s budget, for the handler of `handler` in `group`: all of one
    /// limit in one cluster slot.
    fn key(&self, group: &str, handler: &str, context: &Context) -> String {
        let key = self
            .key_of
            .as_ref()
            .and_then(|key_of| key_of(context))
            .unwrap_or_default();
        format!("{{events:limit:{group}:{handler}}}:{key}")
    }
}

/// A handler's limit, ready to ask for places.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    limit: RateLimit,
    handler: Arc<str>,
    interval: Duration,
}

impl Limiter {
    /// `limit` on the handler of `handler`; an error for a limit that cannot work.
    pub(crate) fn new(limit: RateLimit, handler: &str) -> Result<Self> {
        Ok(Self {
            interval: limit.interval(handler)?,
            handler: Arc::from(handler),
            limit,
        })
    }
}

/// One event's request for its place: its limit's key, and the limit.
#[derive(Debug)]
pub(crate) struct Asked {
    key: String,
    interval: Duration,
    burst: u32,
}

/// Asks Redis for places, one script call per limit (its hash tag).
#[derive(Debug)]
pub(crate) struct Asking {
    connection: Connection,
}

impl Answering for Asking {
    type Request = Asked;
    type Group = (String, Duration, u32);
    type Answer = Duration;

    fn group(request: &Asked) -> Self::Group {
        let tag = request.key[..=request.key.find('}').unwrap_or(0)].to_owned();
        (tag, request.interval, request.burst)
    }

    async fn answer(
        &self,
        (_, interval, burst): &Self::Group,
        requests: &[Asked],
    ) -> redis::RedisResult<Vec<Duration>> {
        let mut invocation = RATE_LIMIT.prepare_invoke();
        for request in requests {
            invocation.key(&request.key);
        }
        invocation.arg(interval.as_micros().max(1)).arg(burst);
        let waits: Vec<u64> = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(waits.into_iter().map(Duration::from_micros).collect())
    }
}

/// Where events ask for their places.
#[derive(Debug, Clone)]
pub(crate) struct Places {
    asking: Batcher<Asking>,
    group: Arc<str>,
}

impl Places {
    /// Starts the task asking Redis over `connection`, for the consumer of `group`.
    pub(crate) fn serve(connection: Connection, group: &str) -> (Self, AbortOnDropHandle<()>) {
        let (asking, task) = Batcher::serve(Asking { connection });
        let places = Self {
            asking,
            group: Arc::from(group),
        };
        (places, task)
    }

    /// How long the event of `context` waits for its place under `limiter`.
    pub(crate) async fn take(
        &self,
        limiter: &Limiter,
        context: &Context,
    ) -> redis::RedisResult<Duration> {
        self.asking
            .ask(Asked {
                key: limiter.limit.key(&self.group, &limiter.handler, context),
                interval: limiter.interval,
                burst: limiter.limit.burst,
            })
            .await
    }
}
