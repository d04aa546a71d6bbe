//! Routing: which stream each event type is written to, chosen by glob patterns.
//!
//! Patterns match event types segment by segment: `*` stands for one dot-separated segment,
//! `**` for any number of them, and `?`, `[abc]` and `{a,b}` work as in shell globs. So
//! `user.*` matches `user.created` but not `user.profile.updated`, which `user.**` matches.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{Envelope, Error, Result};

/// A glob over event types, where `*` stays within one dot-separated segment: globset's path
/// matching, with dots as the separators.
pub(crate) fn event_glob(pattern: &str) -> Result<Glob> {
    GlobBuilder::new(&glob_path(pattern))
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|error| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            reason: error.kind().to_string(),
        })
}

/// An event type or pattern as the path that [`event_glob`] matches.
pub(crate) fn glob_path(event_type: &str) -> String {
    event_type.replace('.', "/")
}

/// How a stream is trimmed as events are added, so it does not grow without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    limit: TrimLimit,
    exact: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrimLimit {
    MaxLen(u64),
    MaxAge(Duration),
}

impl Trim {
    /// Keep about the newest `len` entries (`MAXLEN ~ len`).
    pub fn max_len(len: u64) -> Self {
        Self {
            limit: TrimLimit::MaxLen(len),
            exact: false,
        }
    }

    /// Keep about the entries added in the last `age` (`MINID ~ <now - age>`).
    pub fn max_age(age: Duration) -> Self {
        Self {
            limit: TrimLimit::MaxAge(age),
            exact: false,
        }
    }

    /// Trim exactly (`=`) rather than approximately (`~`). Exact trimming costs more: Redis frees
    /// memory best when it removes whole nodes of the stream, which `~` lets it do.
    pub fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    /// The trimming of a delayed event's `XADD`, kept until it is due: the limit, its operator,
    /// and the length or the age in milliseconds (see `lua/move_due.lua`).
    pub(crate) fn delayed_arguments(&self) -> [String; 3] {
        let operator = if self.exact { "=" } else { "~" };
        match self.limit {
            TrimLimit::MaxLen(len) => ["MAXLEN".into(), operator.into(), len.to_string()],
            TrimLimit::MaxAge(age) => {
                ["MINID".into(), operator.into(), age.as_millis().to_string()]
            }
        }
    }

    /// The `XADD` trimming arguments, with `now` for age limits.
    pub(crate) fn arguments(&self, now: SystemTime) -> [String; 3] {
        let operator = if self.exact { "=" } else { "~" };
        match self.limit {
            TrimLimit::MaxLen(len) => ["MAXLEN".into(), operator.into(), len.to_string()],
            TrimLimit::MaxAge(age) => {
                let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
                let oldest = since_epoch.saturating_sub(age).as_millis();
                ["MINID".into(), operator.into(), oldest.to_string()]
            }
        }
    }
}

/// Where a route writes: one fixed stream, or a stream per event type named prefix + type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Fixed(String),
    Prefixed(String),
}

/// Picks an event's partition key from its envelope.
type KeyOf = Arc<dyn Fn(&Envelope) -> Option<String> + Send + Sync>;

/// A route: event types matching a glob pattern go to a stream, optionally trimmed and
/// partitioned.
#[derive(Clone)]
pub struct Route {
    pattern: String,
    target: Target,
    trim: Option<Trim>,
    partitions: Option<u32>,
    key_of: Option<KeyOf>,
    format: Format,
}

/// How a route writes its events' entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// This crate's flat fields (`id`, `type`, `v`, `origin`, `ts`, `hash`, `body`, ...), each
    /// readable on its own in `redis-cli`.
    #[default]
    Native,
    /// The TypeScript library's (`@logistically/events` v2): one field `data` holding the event's
    /// header and body as JSON, so that its consumers read the events. Its consumers look handlers
    /// up by the type prefixed with a namespace (by default the publishing service's name):
    /// types are written as `<namespace>.<type>`, as they are when the namespace is empty.
    TypeScript {
        /// The prefix of the types written.
        namespace: String,
    },
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("pattern", &self.pattern)
            .field("target", &self.target)
            .field("trim", &self.trim)
            .field("partitions", &self.partitions)
            .field("key_of", &self.key_of.is_some())
            .field("format", &self.format)
            .finish()
    }
}

impl Route {
    /// Events whose type matches `pattern` go to `stream`.
    pub fn to(pattern: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            target: Target::Fixed(stream.into()),
            trim: None,
            partitions: None,
            key_of: None,
            format: Format::Native,
        }
    }

    /// Events whose type matches `pattern` go to a stream of their own, named `prefix` + type:
    /// with prefix `audit:`, `audit.login` goes to `audit:audit.login`.
    pub fn prefixed(pattern: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            target: Target::Prefixed(prefix.into()),
            trim: None,
            partitions: None,
            key_of: None,
            format: Format::Native,
        }
    }

    /// Trims the stream on every write.
    pub fn trim(mut self, trim: Trim) -> Self {
        self.trim = Some(trim);
        self
    }

    /// Spreads the route's stream over `partitions` streams, `<stream>:p0` to `<stream>:p<n-1>`:
    /// events with the same partition key always go to the same one, so their order is kept (the
    /// key is the event's [`Event::partition_key`](crate::Event::partition_key), one set with
    /// [`PublishOptions::partition_key`](crate::PublishOptions::partition_key), or
    /// [`partition_by`](Self::partition_by)'s); events without a key are spread by their id.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions.max(1));
        self
    }

    /// Takes the partition key from the envelope with `key_of` when the event gives none.
    pub fn partition_by(
        mut self,
        key_of: impl Fn(&Envelope) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key_of = Some(Arc::new(key_of));
        self
    }

    /// Writes the route's events in the TypeScript library's format, their types prefixed with
    /// `namespace` (see [`Format::TypeScript`]), so that its consumers read them. This crate's
    /// consumers read both formats.
    pub fn typescript(mut self, namespace: impl Into<String>) -> Self {
        self.format = Format::TypeScript {
            namespace: namespace.into(),
        };
        self
    }

    /// The glob pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

/// The name of partition `partition` of `stream`.
pub fn partition_stream(stream: &str, partition: u32) -> String {
    format!("{stream}:p{partition}")
}

/// The names of all `partitions` partitions of `stream`, in order: what a consumer of the
/// logical stream reads.
pub fn partition_streams(stream: &str, partitions: u32) -> Vec<String> {
    (0..partitions.max(1))
        .map(|partition| partition_stream(stream, partition))
        .collect()
}

/// The partition of `key` among `partitions`: FNV-1a, so the same key always gives the same
/// partition, in every process and version.
fn partition_of(key: &str, partitions: u32) -> u32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(partitions)).expect("below a u32")
}

/// Where one event goes: the stream, and how to trim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'a> {
    /// The stream's key.
    pub stream: Cow<'a, str>,
    /// Trimming applied with the write.
    pub trim: Option<Trim>,
    /// How the entry is written.
    pub format: Format,
}

/// Ordered routes, first match wins, then an optional default. Build it with [`Router::builder`].
#[derive(Debug, Clone)]
pub struct Router {
    globs: GlobSet,
    routes: Vec<Route>,
    default: Option<Route>,
}

/// Collects routes for a [`Router`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RouterBuilder {
    routes: Vec<Route>,
    default: Option<Route>,
}

impl RouterBuilder {
    /// Adds a route after those already added: earlier routes win.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Events that match no route go to `stream`.
    pub fn default_stream(mut self, stream: impl Into<String>) -> Self {
        self.default = Some(Route::to("**", stream));
        self
    }

    /// Events that match no route go to a stream of their own, named `prefix` + type.
    pub fn default_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.default = Some(Route::prefixed("**", prefix));
        self
    }

    /// Trims the default stream on every write.
    pub fn default_trim(mut self, trim: Trim) -> Self {
        self.default = self.default.map(|route| route.trim(trim));
        self
    }

    /// Checks every pattern and stream name; an invalid glob fails here, naming the pattern.
    pub fn build(self) -> Result<Router> {
        let mut globs = GlobSetBuilder::new();
        for route in self.routes.iter().chain(&self.default) {
            if let Target::Fixed(stream) = &route.target
                && stream.is_empty()
            {
                return Err(Error::Config(format!(
                    "route `{}` names an empty stream",
                    route.pattern
                )));
            }
        }
        for route in &self.routes {
            globs.add(event_glob(&route.pattern)?);
        }
        let globs = globs.build().map_err(|error| Error::InvalidPattern {
            pattern: error.glob().unwrap_or_default().replace('/', "."),
            reason: error.kind().to_string(),
        })?;
        Ok(Router {
            globs,
            routes: self.routes,
            default: self.default,
        })
    }
}

impl Router {
    /// An empty builder: no routes, no default.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// Every event to one stream.
    pub fn single(stream: impl Into<String>) -> Self {
        Self::builder()
            .default_stream(stream)
            .build()
            .expect("a router without patterns always builds")
    }

    /// Where `envelope` goes: its type's route, and on a partitioned route the partition of its
    /// key.
    pub fn destination(&self, envelope: &Envelope) -> Result<Destination<'_>> {
        let (route, destination) = self.route_of(&envelope.event_type)?;
        let Some(partitions) = route.partitions else {
            return Ok(destination);
        };
        let from_route = || route.key_of.as_ref().and_then(|key_of| key_of(envelope));
        let key = envelope.partition_key.clone().or_else(from_route);
        let partition = partition_of(key.as_deref().unwrap_or(&envelope.id), partitions);
        Ok(Destination {
            stream: Cow::Owned(partition_stream(&destination.stream, partition)),
            ..destination
        })
    }

    /// Where events of `event_type` go: the first matching route, else the default (for a
    /// partitioned route, the logical stream; [`destination`](Self::destination) picks the
    /// partition).
    pub fn resolve(&self, event_type: &str) -> Result<Destination<'_>> {
        self.route_of(event_type)
            .map(|(_, destination)| destination)
    }

    /// The streams the routes name outright (every partition of a partitioned one); streams
    /// named by a prefix and the event type are not known ahead.
    pub(crate) fn fixed_streams(&self) -> Vec<String> {
        self.routes
            .iter()
            .chain(&self.default)
            .filter_map(|route| match &route.target {
                Target::Fixed(stream) => Some(match route.partitions {
                    Some(partitions) => partition_streams(stream, partitions),
                    None => vec![stream.clone()],
                }),
                Target::Prefixed(_) => None,
            })
            .flatten()
            .collect()
    }

    fn route_of(&self, event_type: &str) -> Result<(&Route, Destination<'_>)> {
        let first = if self.routes.is_empty() {
            None
        } else {
            self.globs
                .matches(event_type.replace('.', "/"))
                .into_iter()
                .min()
        };
        let route = first
            .map(|index| &self.routes[index])
            .or(self.default.as_ref())
            .ok_or_else(|| Error::NoRoute {
                event_type: event_type.to_owned(),
            })?;
        let stream = match &route.target {
            Target::Fixed(stream) => Cow::Borrowed(stream.as_str()),
            Target::Prefixed(prefix) => Cow::Owned(format!("{prefix}{event_type}")),
        };
        Ok((
            route,
            Destination {
                stream,
                trim: route.trim,
                format: route.format.clone(),
            },
        ))
    }

    /// The routes in order, then the default if there is one.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().chain(&self.default)
    }
}

impl Default for Router {
    /// Every event type to a stream named after the type.
    fn default() -> Self {
        Self::builder()
            .default_prefix("")
            .build()
            .expect("a router without patterns always builds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::builder()
            .route(Route::to("user.*", "users"))
            .route(Route::to("payment.**", "payments").trim(Trim::max_len(1000)))
            .route(Route::prefixed("audit.{login,logout}", "audit:"))
            .route(Route::to("user.deleted", "never-reached"))
            .build()
            .unwrap()
    }

    fn stream(router: &Router, event_type: &str) -> Result<String> {
        router
            .resolve(event_type)
            .map(|destination| destination.stream.into_owned())
    }

    #[test]
    fn star_matches_one_segment() {
        let router = router();
        assert_eq!(stream(&router, "user.created").unwrap(), "users");
        assert!(matches!(
            stream(&router, "user.profile.updated"),
            Err(Error::NoRoute { .. })
        ));
    }

    #[test]
    fn double_star_matches_any_depth() {
        let router = router();
        assert_eq!(
            stream(&router, "payment.card.captured").unwrap(),
            "payments"
        );
        assert_eq!(
            router.resolve("payment.refunded").unwrap().trim,
            Some(Trim::max_len(1000))
        );
    }

    #[test]
    fn first_match_wins() {
        assert_eq!(stream(&router(), "user.deleted").unwrap(), "users");
    }

    #[test]
    fn prefixed_routes_name_a_stream_per_type() {
        let router = router();
        assert_eq!(stream(&router, "audit.login").unwrap(), "audit:audit.login");
        assert!(stream(&router, "audit.export").is_err());
    }

    #[test]
    fn unrouted_types_go_to_the_default() {
        let router = Router::builder()
            .route(Route::to("user.*", "users"))
            .default_stream("events")
            .default_trim(Trim::max_len(10))
            .build()
            .unwrap();
        assert_eq!(stream(&router, "order.paid").unwrap(), "events");
        assert_eq!(
            router.resolve("order.paid").unwrap().trim,
            Some(Trim::max_len(10))
        );
        assert_eq!(stream(&router, "user.created").unwrap(), "users");
    }

    #[test]
    fn no_route_and_no_default_names_the_type() {
        let error = stream(&router(), "order.paid").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no route matches event type `order.paid` and there is no default stream"
        );
    }

    #[test]
    fn invalid_glob_fails_at_build_naming_the_pattern() {
        let error = Router::builder()
            .route(Route::to("user.*", "users"))
            .route(Route::to("order.[", "orders"))
            .build()
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("invalid route pattern `order.[`: "),
            "{message}"
        );
    }

    #[test]
    fn empty_stream_names_are_rejected() {
        let error = Router::builder()
            .route(Route::to("a.*", ""))
            .build()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration: route `a.*` names an empty stream"
        );
    }

    #[test]
    fn the_default_router_names_streams_after_types() {
        assert_eq!(
            stream(&Router::default(), "user.created").unwrap(),
            "user.created"
        );
        assert_eq!(stream(&Router::single("all"), "x.y").unwrap(), "all");
    }

    #[test]
    fn trim_arguments() {
        let now = UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(Trim::max_len(5).arguments(now), ["MAXLEN", "~", "5"]);
        assert_eq!(
            Trim::max_len(5).exact().arguments(now),
            ["MAXLEN", "=", "5"]
        );
        assert_eq!(
            Trim::max_age(Duration::from_secs(40)).arguments(now),
            ["MINID", "~", "60000"]
        );
    }
}
