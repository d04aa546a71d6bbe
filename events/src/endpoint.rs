//! Where a Redis is and how to reach it: a URL, with TLS certificates and credentials when the URL
//! does not carry them, or a redis-rs client of the caller's own (custom TLS, a credentials
//! provider, its own settings).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::IntoConnectionInfo;
#[cfg(feature = "cluster")]
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use tokio::sync::Mutex;

use crate::replicas::Replicas;
use crate::{Error, Result};

/// Prefix of a URL naming the seed nodes of a Redis Cluster:
/// `redis+cluster://host1:port1,host2:port2`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Prefix of a URL naming the seed nodes of a Redis Cluster reached over TLS.
pub const TLS_CLUSTER_SCHEME: &str = "rediss+cluster://";

/// Prefix of a URL naming Redis Sentinels and the master they watch:
/// `redis+sentinel://host1:port1,host2:port2/master-name`. Credentials in it are the master's.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// Where a Redis (or a Redis Cluster) is and how to reach it. Every entry point takes one, or a
/// URL: `redis://host:port`, `rediss://` for TLS, `valkey://` and `valkeys://` alike, and
/// `redis+cluster://host:port,host:port` (`rediss+cluster://` over TLS) for a cluster, whose
/// credentials, given on any node, go to every node, and
/// `redis+sentinel://host:port,host:port/master-name` for the master Redis Sentinels name, followed
/// through failovers.
#[derive(Clone)]
#[must_use]
pub struct Endpoint {
    target: Target,
    credentials: Option<Credentials>,
    /// The Sentinels' own credentials, when they ask for a password.
    sentinel_credentials: Option<Credentials>,
    replicas: Option<Replicas>,
    #[cfg(feature = "tls")]
    certificates: Option<redis::TlsCertificates>,
}

/// What connections are made from.
#[derive(Clone)]
enum Target {
    Url(String),
    Client(Box<redis::Client>),
    #[cfg(feature = "cluster")]
    Cluster(Box<ClusterClient>),
    Sentinel(Arc<Mutex<SentinelClient>>),
}

/// A user name (none for `default`) and a password.
#[derive(Clone)]
struct Credentials {
    username: Option<String>,
    password: String,
}

impl Credentials {
    fn new(username: Option<&str>, password: impl Into<String>) -> Self {
        Self {
            username: username.map(str::to_owned),
            password: password.into(),
        }
    }
}

/// What connections to one server or to a cluster are made from.
pub(crate) enum Client {
    Single(Box<redis::Client>),
    #[cfg(feature = "cluster")]
    Cluster(Box<ClusterClient>),
    Sentinel(Arc<Mutex<SentinelClient>>),
}

impl Endpoint {
    /// The Redis at `url`.
    pub fn url(url: impl Into<String>) -> Self {
        Self::of(Target::Url(url.into()))
    }

    /// Connections made from `client`, a redis-rs client built the caller's way.
    pub fn client(client: redis::Client) -> Self {
        Self::of(Target::Client(Box::new(client)))
    }

    /// Connections to a cluster made from `client`, built the caller's way.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster(client: ClusterClient) -> Self {
        Self::of(Target::Cluster(Box::new(client)))
    }

    /// Connections to the master `client` names, a redis-rs Sentinel client built the caller's
    /// way (it must look for a master), followed through failovers.
    pub fn sentinel(client: SentinelClient) -> Self {
        Self::of(Target::Sentinel(Arc::new(Mutex::new(client))))
    }

    fn of(target: Target) -> Self {
        Self {
            target,
            credentials: None,
            sentinel_credentials: None,
            replicas: None,
            #[cfg(feature = "tls")]
            certificates: None,
        }
    }

    /// Logs in as `username` (`None` for `default`) with `password`, whatever the URL says: for
    /// credentials kept apart from the URL.
    pub fn credentials(mut self, username: Option<&str>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::new(username, password));
        self
    }

    /// Logs in to the Sentinels of a `redis+sentinel://` URL as `username` (`None` for
    /// `default`) with `password`, for Sentinels that ask for one (`requirepass` in their
    /// configuration); the URL's credentials are the master's.
    pub fn sentinel_credentials(
        mut self,
        username: Option<&str>,
        password: impl Into<String>,
    ) -> Self {
        self.sentinel_credentials = Some(Credentials::new(username, password));
        self
    }

    /// Waits, after every command, until `count` replicas hold all it wrote (`WAIT`); a write
    /// they do not confirm within `timeout` fails with a retryable error, to be written again.
    /// With Redis's asynchronous replication, this keeps what was acknowledged through a failover
    /// (see the README's Sentinel section), at the cost of a replica round trip per command. Not
    /// for clusters yet.
    pub fn wait_for_replicas(mut self, count: usize, timeout: Duration) -> Self {
        self.replicas = Some(Replicas::new(count, timeout));
        self
    }

    /// The replicas every command waits for, if any.
    pub(crate) fn replicas(&self) -> Option<Replicas> {
        self.replicas
    }

    /// Trusts the certificate authorities in `pem` (PEM-encoded) instead of the system's, for a
    /// `rediss://` URL.
    #[cfg(feature = "tls")]
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.certificates_mut().root_cert = Some(pem.into());
        self
    }

    /// Presents `certificate` with its private `key` (both PEM-encoded) to a server that asks
    /// clients for one (mutual TLS).
    #[cfg(feature = "tls")]
    pub fn client_certificate(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.certificates_mut().client_tls = Some(redis::ClientTlsConfig {
            client_cert: certificate.into(),
            client_key: key.into(),
        });
        self
    }

    #[cfg(feature = "tls")]
    fn certificates_mut(&mut self) -> &mut redis::TlsCertificates {
        self.certificates.get_or_insert(redis::TlsCertificates {
            client_tls: None,
            root_cert: None,
        })
    }

    /// Whether connections are made from its URL (not from a client of the caller's own).
    pub(crate) fn is_url(&self) -> bool {
        matches!(self.target, Target::Url(_))
    }

    /// The authority and client certificate its TLS connections use, if given.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> Option<&redis::TlsCertificates> {
        self.certificates.as_ref()
    }

    /// Whether its URL asks for TLS (a client of the caller's own is taken to know).
    pub(crate) fn uses_tls(&self) -> bool {
        match &self.target {
            Target::Url(url) => ["rediss://", "valkeys://", TLS_CLUSTER_SCHEME]
                .iter()
                .any(|scheme| url.starts_with(scheme)),
            Target::Client(_) | Target::Sentinel(_) => true,
            #[cfg(feature = "cluster")]
            Target::Cluster(_) => true,
        }
    }

    /// The client connections are made from, with the response timeout of cluster connections.
    pub(crate) fn make_client(&self, response_timeout: std::time::Duration) -> Result<Client> {
        let connect_error = |source| Error::Connect { source };
        match &self.target {
            Target::Client(client) => Ok(Client::Single(client.clone())),
            #[cfg(feature = "cluster")]
            Target::Cluster(client) => Ok(Client::Cluster(client.clone())),
            Target::Sentinel(client) => Ok(Client::Sentinel(client.clone())),
            Target::Url(url) => {
                let url = as_redis_url(url);
                if let Some(sentinels) = sentinel_nodes(&url)? {
                    return self.sentinel_client(sentinels);
                }
                if let Some((tls, nodes)) = cluster_nodes(&url) {
                    return self.cluster_client(tls, nodes, response_timeout);
                }
                let mut info = url.as_ref().into_connection_info().map_err(connect_error)?;
                if let Some(credentials) = &self.credentials {
                    let mut redis = info.redis_settings().clone();
                    if let Some(username) = &credentials.username {
                        redis = redis.set_username(username);
                    }
                    info = info.set_redis_settings(redis.set_password(&credentials.password));
                }
                self.single(info)
                    .map(|client| Client::Single(Box::new(client)))
            }
        }
    }

    /// A Sentinel client for the master and Sentinels `sentinels` names.
    fn sentinel_client(&self, sentinels: Sentinels) -> Result<Client> {
        let config_error = |source: redis::RedisError| Error::Config(source.to_string());
        let addresses = sentinels
            .addresses
            .iter()
            .map(|address| {
                format!("redis://{address}")
                    .into_connection_info()
                    .map(|info| info.addr().clone())
                    .map_err(config_error)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut builder =
            SentinelClientBuilder::new(addresses, &sentinels.master, SentinelServerType::Master)
                .map_err(config_error)?;
        if let Some(credentials) = self.credentials.clone().or(sentinels.credentials) {
            if let Some(username) = credentials.username {
                builder = builder.set_client_to_redis_username(username);
            }
            builder = builder.set_client_to_redis_password(credentials.password);
        }
        if let Some(credentials) = self.sentinel_credentials.clone() {
            if let Some(username) = credentials.username {
                builder = builder.set_client_to_sentinel_username(username);
            }
            builder = builder.set_client_to_sentinel_password(credentials.password);
        }
        let client = builder.build().map_err(config_error)?;
        Ok(Client::Sentinel(Arc::new(Mutex::new(client))))
    }

    #[cfg(feature = "tls")]
    fn single(&self, info: redis::ConnectionInfo) -> Result<redis::Client> {
        let built = match &self.certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
            None => redis::Client::open(info),
        };
        built.map_err(|source| Error::Connect { source })
    }

    #[cfg(not(feature = "tls"))]
    fn single(&self, info: redis::ConnectionInfo) -> Result<redis::Client> {
        redis::Client::open(info).map_err(|source| Error::Connect { source })
    }

    /// A cluster client for `nodes`, over TLS if `tls`.
    #[cfg(feature = "cluster")]
    fn cluster_client(
        &self,
        tls: bool,
        nodes: Nodes,
        response_timeout: std::time::Duration,
    ) -> Result<Client> {
        let mut builder = ClusterClientBuilder::new(nodes.addresses)
            .response_timeout(response_timeout)
            .connection_timeout(std::time::Duration::from_secs(1));
        if let Some(credentials) = self.credentials.clone().or(nodes.credentials) {
            if let Some(username) = credentials.username {
                builder = builder.username(username);
            }
            builder = builder.password(credentials.password);
        }
        self.cluster_tls(builder, tls)?
            .build()
            .map(|client| Client::Cluster(Box::new(client)))
            .map_err(|source| Error::Connect { source })
    }

    #[cfg(not(feature = "cluster"))]
    fn cluster_client(&self, _: bool, _: Nodes, _: std::time::Duration) -> Result<Client> {
        Err(Error::Config(
            "a redis+cluster:// URL needs the `cluster` feature of redis-typed-events".into(),
        ))
    }

    #[cfg(all(feature = "cluster", feature = "tls"))]
    fn cluster_tls(
        &self,
        builder: ClusterClientBuilder,
        tls: bool,
    ) -> Result<ClusterClientBuilder> {
        let builder = if tls {
            builder.tls(redis::TlsMode::Secure)
        } else {
            builder
        };
        Ok(match &self.certificates {
            Some(certificates) => builder.certs(certificates.clone()),
            None => builder,
        })
    }

    #[cfg(all(feature = "cluster", not(feature = "tls")))]
    fn cluster_tls(
        &self,
        builder: ClusterClientBuilder,
        tls: bool,
    ) -> Result<ClusterClientBuilder> {
        if tls {
            return Err(Error::Config(
                "a rediss+cluster:// URL needs the `tls` feature of redis-typed-events".into(),
            ));
        }
        Ok(builder)
    }
}

impl fmt::Display for Endpoint {
    /// The endpoint as an operator may read it: no password of any node.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Url(url) => f.write_str(&without_credentials(url)),
            Target::Client(_) => f.write_str("(a redis-rs client)"),
            #[cfg(feature = "cluster")]
            Target::Cluster(_) => f.write_str("(a redis-rs cluster client)"),
            Target::Sentinel(_) => f.write_str("(a redis-rs Sentinel client)"),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.to_string()).finish()
    }
}

impl From<&str> for Endpoint {
    fn from(url: &str) -> Self {
        Self::url(url)
    }
}

impl From<String> for Endpoint {
    fn from(url: String) -> Self {
        Self::url(url)
    }
}

impl From<&String> for Endpoint {
    fn from(url: &String) -> Self {
        Self::url(url.as_str())
    }
}

/// `url` with the credentials of every node left out: `redis+cluster://***@h1,***@h2`.
fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let nodes: Vec<String> = rest
        .split(',')
        .map(|node| match node.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => node.to_owned(),
        })
        .collect();
    format!("{scheme}://{}", nodes.join(","))
}

/// `url` with a `valkey://` or `valkeys://` scheme read as `redis://` or `rediss://`.
fn as_redis_url(url: &str) -> Cow<'_, str> {
    for (valkey, redis) in [("valkey://", "redis://"), ("valkeys://", "rediss://")] {
        if let Some(rest) = url.strip_prefix(valkey) {
            return format!("{redis}{rest}").into();
        }
    }
    url.into()
}

/// A cluster URL's nodes, without credentials, and the credentials given on any of them.
#[cfg_attr(
    not(feature = "cluster"),
    expect(dead_code, reason = "a cluster client reads them")
)]
struct Nodes {
    addresses: Vec<String>,
    credentials: Option<Credentials>,
}

/// Whether `url` names a cluster, over TLS or not, and its nodes.
fn cluster_nodes(url: &str) -> Option<(bool, Nodes)> {
    let (tls, nodes) = match url.strip_prefix(CLUSTER_SCHEME) {
        Some(nodes) => (false, nodes),
        None => (true, url.strip_prefix(TLS_CLUSTER_SCHEME)?),
    };
    let scheme = if tls { "rediss" } else { "redis" };
    let (hosts, credentials) = logins(nodes);
    let addresses = hosts
        .into_iter()
        .map(|host| format!("{scheme}://{host}"))
        .collect();
    Some((
        tls,
        Nodes {
            addresses,
            credentials,
        },
    ))
}

/// The Sentinels of a `redis+sentinel://` URL and the master they watch.
struct Sentinels {
    /// `host:port` of each Sentinel.
    addresses: Vec<String>,
    master: String,
    /// The master's credentials, given on any Sentinel.
    credentials: Option<Credentials>,
}

/// The Sentinels `url` names, if it is a `redis+sentinel://` URL.
fn sentinel_nodes(url: &str) -> Result<Option<Sentinels>> {
    if url.starts_with("rediss+sentinel://") {
        return Err(Error::Config(
            "TLS to Sentinels is not supported yet: use redis+sentinel://, or a redis-rs \
             SentinelClient of your own with Endpoint::sentinel"
                .into(),
        ));
    }
    let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
        return Ok(None);
    };
    let (nodes, master) = rest.split_once('/').unwrap_or((rest, ""));
    if master.is_empty() || nodes.is_empty() {
        return Err(Error::Config(format!(
            "{} names no Sentinels or no master: use redis+sentinel://host:port,host:port/master-name",
            without_credentials(url)
        )));
    }
    let (addresses, credentials) = logins(nodes);
    Ok(Some(Sentinels {
        addresses: addresses.into_iter().map(str::to_owned).collect(),
        master: master.to_owned(),
        credentials,
    }))
}

/// The hosts of comma-separated `nodes`, each maybe `user:password@host:port`, and the first
/// credentials given on any of them.
fn logins(nodes: &str) -> (Vec<&str>, Option<Credentials>) {
    let mut credentials = None;
    let hosts = nodes
        .split(',')
        .map(|node| {
            let node = node.trim();
            let Some((login, host)) = node.rsplit_once('@') else {
                return node;
            };
            let (username, password) = match login.split_once(':') {
                Some((username, password)) => (
                    (!username.is_empty()).then(|| username.to_owned()),
                    password,
                ),
                None => (None, login),
            };
            credentials.get_or_insert(Credentials {
                username,
                password: password.to_owned(),
            });
            host
        })
        .collect();
    (hosts, credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valkey_urls_are_redis_urls() {
        assert_eq!(as_redis_url("valkey://h:6379"), "redis://h:6379");
        assert_eq!(as_redis_url("valkeys://h:6380"), "rediss://h:6380");
        assert_eq!(as_redis_url("redis://h"), "redis://h");
    }

    #[test]
    fn cluster_credentials_given_on_one_node_go_to_all() {
        let (tls, nodes) = cluster_nodes("redis+cluster://ops:pw@h1:7000, h2:7001").unwrap();
        assert!(!tls);
        assert_eq!(nodes.addresses, ["redis://h1:7000", "redis://h2:7001"]);
        let credentials = nodes.credentials.unwrap();
        assert_eq!(
            (
                credentials.username.as_deref(),
                credentials.password.as_str()
            ),
            (Some("ops"), "pw")
        );
        let (tls, nodes) = cluster_nodes("rediss+cluster://:pw@h1:7000").unwrap();
        assert!(tls);
        assert_eq!(nodes.addresses, ["rediss://h1:7000"]);
        assert_eq!(nodes.credentials.unwrap().username, None);
        assert!(cluster_nodes("redis://h:1").is_none());
    }

    #[test]
    fn sentinel_urls_name_sentinels_and_a_master() {
        let sentinels = sentinel_nodes("redis+sentinel://:pw@s1:26379,s2:26380/orders")
            .unwrap()
            .unwrap();
        assert_eq!(sentinels.addresses, ["s1:26379", "s2:26380"]);
        assert_eq!(sentinels.master, "orders");
        assert_eq!(sentinels.credentials.unwrap().password, "pw");
        let unnamed = sentinel_nodes("redis+sentinel://s1:26379").err().unwrap();
        assert!(unnamed.to_string().contains("no master"), "{unnamed}");
        assert!(sentinel_nodes("rediss+sentinel://s1:26379/m").is_err());
        assert!(sentinel_nodes("redis://h:1").unwrap().is_none());
    }

    #[test]
    fn no_password_of_any_node_is_shown() {
        assert_eq!(
            without_credentials("redis+cluster://u:pw@h1:7000,u:pw@h2:7001"),
            "redis+cluster://***@h1:7000,***@h2:7001"
        );
        assert_eq!(
            without_credentials("redis://:p@ss@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(without_credentials("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            Endpoint::url("redis://u:secret@h:1").to_string(),
            "redis://***@h:1"
        );
    }
}
