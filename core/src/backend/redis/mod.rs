//! `redis://` (Redis Streams, at least once) and `redis+pubsub://` (Redis Pub/Sub, at most
//! once); `rediss://` and `rediss+pubsub://` connect with TLS.
//!
//! Both modes name topics on the server `<prefix>.<topic>`; a bus without a `prefix` uses
//! [`DEFAULT_PREFIX`] (`polybus`), so polybus keys never mix with an application's own keys.
//!
//! - **Streams** ([`streams`]): one stream per topic, `XADD` with approximate `MAXLEN`
//!   trimming, metadata as stream fields (`docs/wire-format.md`). Groups are Redis consumer
//!   groups; a broadcast subscription gets a consumer group of its own. Events are
//!   acknowledged (`XACK`) after the handler succeeded; what a dead consumer left pending is
//!   reclaimed by another member (`XAUTOCLAIM`) after `redis.claim_idle_ms`. Streams have no
//!   subject wildcards: a wildcard pattern reads every stream whose topic matches, found with
//!   `SCAN` (a key's order across topics is best effort).
//! - **Streams on a Redis Cluster** (`redis+cluster://`): the same, with a cluster client that
//!   sends each command to the node of its key; wildcard discovery scans every primary and
//!   reads each stream on its own (one command cannot span slots).
//! - **Pub/Sub** ([`pubsub`]): `PUBLISH` of a CloudEvents JSON envelope; `SUBSCRIBE`, or
//!   `PSUBSCRIBE` with a glob that may over-match, filtered by the real pattern. No history,
//!   no groups.
//!
//! Publishes from one bus go through one writer task that pipelines them on one connection
//! (the order is fixed when [`Backend::publish`] returns, only the replies are awaited). The
//! backend never retries a command: a failed publish is reported as it happened, and failed
//! handlers are retried by the dispatcher.

mod pubsub;
mod streams;

use crate::backend::cetime::percent_decode;
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use ::redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisError, RedisFuture, Value,
};
use tokio::sync::{oneshot, watch, Notify};

use super::{Backend, BoxFut, Publishing, Subscribed};
use crate::{
    config::{Config, RedisConfig},
    connection::ConnectionState,
    error::{Error, ErrorKind, Result},
    message::Message,
    subscription::SubscribeOptions,
    topic::Pattern,
};

/// The prefix of a bus whose `prefix` is empty.
pub(crate) const DEFAULT_PREFIX: &str = "polybus";

/// How long a stopped subscription hands over what was already routed to it.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Most publishes written in one pipeline.
const PIPELINE_MAX: usize = 512;

/// Publishes queued for the writer before `publish` has to wait.
const QUEUE_MAX: usize = 8192;

/// Which Redis data structure carries the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Streams and consumer groups (`redis://`).
    Streams,
    /// Streams and consumer groups on a Redis Cluster (`redis+cluster://`).
    ClusterStreams,
    /// Pub/Sub channels (`redis+pubsub://`).
    PubSub,
}

/// A connection to one server or to a cluster; commands go to the node of their key.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A connection of its own to one server.
    Single(MultiplexedConnection),
    /// The bus's shared, reconnecting connection to one server.
    Managed(ConnectionManager),
    /// Connections to every node of a cluster, and the longest any request may take: the
    /// cluster client can wait on a node that is restarting past its own response timeout
    /// (seen after a restart of the whole cluster), so every request is bounded here too.
    Cluster(ClusterConnection, Duration),
}

impl Conn {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(..))
    }
}

/// `fut`, failing as a lost connection when it takes longer than `limit`.
fn bounded<'a, T: Send + 'a>(limit: Duration, fut: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    Box::pin(async move {
        tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ::redis::ErrorKind::Io,
                "the cluster did not answer in time",
            )))
        })
    })
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c, limit) => bounded(*limit, c.req_packed_command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c, limit) => {
                bounded(*limit, c.req_packed_commands(pipeline, offset, count))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Managed(c) => c.get_db(),
            Conn::Cluster(c, _) => c.get_db(),
        }
    }
}

/// How new connections are made: to one server, or to a cluster. Made once per bus.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Connector {
    Single(Client),
    Cluster(ClusterClient),
}

/// Cleanup tasks still running (a broadcast group being destroyed), awaited by `close`.
#[derive(Default)]
struct Cleanups {
    running: AtomicUsize,
    done: Notify,
}

/// What the publisher, the subscriptions and their ackers share.
pub(crate) struct Shared {
    client: Connector,
    /// Publishes, acks and administrative commands (reconnects by itself; a cluster's is
    /// renewed when it stays lost, see [`Shared::note`]). Read it with [`Shared::conn`].
    conn: Arc<parking_lot::Mutex<Conn>>,
    /// A renewal of the cluster connection is under way.
    renewing: Arc<AtomicBool>,
    /// The prefix and a dot.
    wire_prefix: String,
    /// The URL with any password hidden, for messages.
    shown_url: String,
    cfg: RedisConfig,
    /// The bus name, or `polybus`: the start of consumer names.
    name: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    state: watch::Sender<ConnectionState>,
    cleanups: Cleanups,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    /// The key (stream) or channel of a topic or pattern.
    fn key(&self, topic: &str) -> String {
        let mut s = String::with_capacity(self.wire_prefix.len() + topic.len());
        s.push_str(&self.wire_prefix);
        s.push_str(topic);
        s
    }

    /// A connection of its own (blocking reads, Pub/Sub), whose replies may take `extra`
    /// longer than a command.
    async fn dedicated(&self, extra: Duration) -> std::result::Result<Conn, Error> {
        let fail = |e: RedisError| redis_error(&format!("connecting to {}", self.shown_url), &e);
        match &self.client {
            Connector::Single(client) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.command_timeout + extra));
                client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map(Conn::Single)
                    .map_err(fail)
            }
            // Blocking reads on a cluster wait at most `extra` (see `streams`): the cluster
            // client's response timeout covers them.
            Connector::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| Conn::Cluster(c, self.connect_timeout + self.command_timeout + extra))
                .map_err(fail),
        }
    }

    /// The client of Pub/Sub connections (one server only).
    fn single_client(&self) -> Option<&Client> {
        match &self.client {
            Connector::Single(c) => Some(c),
            Connector::Cluster(_) => None,
        }
    }

    /// Records whether the server answered: the bus's connection state follows.
    /// The shared connection (a cheap handle onto it).
    fn conn(&self) -> Conn {
        self.conn.lock().clone()
    }

    fn note(&self, e: Option<&RedisError>) {
        let next = match e {
            None => ConnectionState::Connected,
            Some(e) if is_connection_error(e) => {
                self.renew_cluster_connection();
                ConnectionState::Disconnected
            }
            Some(e) if e.kind() == ::redis::ErrorKind::ClusterConnectionNotFound => {
                self.renew_cluster_connection();
                return;
            }
            Some(_) => return,
        };
        self.state.send_if_modified(|s| {
            let changed = *s != next && *s != ConnectionState::Closed;
            if changed {
                *s = next;
            }
            changed
        });
    }

    /// After the whole cluster restarted, the cluster client's shared connection can stay
    /// without a connection to any node (every request fails `ClusterConnectionNotFound`, or
    /// waits out its timeout) while new connections work: a lost connection is replaced by a
    /// new one from the client, one renewal at a time, at most one every 200 ms.
    fn renew_cluster_connection(&self) {
        let Connector::Cluster(client) = &self.client else {
            return;
        };
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (client, slot, renewing) = (client.clone(), self.conn.clone(), self.renewing.clone());
        let limit = self.connect_timeout;
        let bound =
            self.connect_timeout + self.command_timeout + Config::duration(self.cfg.block_ms);
        drop(self.runtime.spawn(async move {
            match tokio::time::timeout(limit, client.get_async_connection()).await {
                Ok(Ok(c)) => *slot.lock() = Conn::Cluster(c, bound),
                Ok(Err(e)) => tracing::debug!(target: "polybus::redis", error = %e,
                    "the cluster connection could not be renewed yet"),
                Err(_) => tracing::debug!(target: "polybus::redis",
                    "the cluster connection could not be renewed in time"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            renewing.store(false, Ordering::Release);
        }));
    }

    /// Runs `fut` in the background, counted until it ends so `close` can wait for it.
    fn spawn_cleanup(
        self: &Arc<Self>,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let shared = self.clone();
        shared.cleanups.running.fetch_add(1, Ordering::AcqRel);
        drop(self.runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), fut).await;
            shared.cleanups.running.fetch_sub(1, Ordering::AcqRel);
            shared.cleanups.done.notify_waiters();
        }));
    }
}

/// Whether an error means the connection is lost (rather than a refused command).
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Maps a Redis error onto the polybus kinds: rejected credentials are `Auth`, an unreachable
/// server or one not ready yet (`LOADING` after a restart, `TRYAGAIN`, `CLUSTERDOWN`,
/// `MASTERDOWN`) `Connection`, no answer in time `Timeout`, anything the server refused
/// `Backend`.
pub(crate) fn redis_error(what: &str, e: &RedisError) -> Error {
    let code = e.code().unwrap_or_default();
    let auth = e.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM");
    let (kind, hint) = if auth {
        (
            ErrorKind::Auth,
            ": the server rejected the credentials (check redis.username and redis.password, \
             or the user and password in the URL)",
        )
    } else if e.is_timeout() {
        (ErrorKind::Timeout, ": the server did not answer in time")
    } else if is_connection_error(e) {
        (ErrorKind::Connection, ": the server could not be reached")
    } else if matches!(code, "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN") {
        // Not a refusal of the command: the server is starting, loading its data or failing
        // over, and the same command succeeds once it is ready.
        (
            ErrorKind::Connection,
            ": the server is not ready yet (starting, loading or failing over); try again",
        )
    } else {
        (ErrorKind::Backend, "")
    };
    Error::new(kind, format!("{what}{hint} ({e})"))
}

/// Where to connect and as whom, from the URL.
#[derive(Debug, Default, PartialEq)]
struct Target {
    hosts: Vec<(String, u16)>,
    tls: bool,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
    shown: String,
}

/// Splits `host[:port]` (IPv6 in brackets); the port defaults to 6379.
fn host_port(s: &str) -> Option<(String, u16)> {
    let s = s.trim();
    if s.is_empty() || s.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 6379,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h.to_owned(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((s.to_owned(), 6379)),
    }
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let shown = redact(url);
        let bad = |why: &str| Error::new(ErrorKind::InvalidConfig, format!("url {shown:?}: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tls = scheme.starts_with("rediss");
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) || authority.contains(['?', '#']) {
            return Err(bad(
                "query parameters are not supported (use the redis section)",
            ));
        }
        let mut t = Target {
            tls,
            shown: shown.clone(),
            ..Target::default()
        };
        let host = match authority.rsplit_once('@') {
            Some((auth, host)) => {
                match auth.split_once(':') {
                    Some((u, p)) => {
                        if !u.is_empty() {
                            t.username = Some(percent_decode(u));
                        }
                        t.password = Some(percent_decode(p));
                    }
                    None => t.password = Some(percent_decode(auth)),
                }
                host
            }
            None => authority,
        };
        if !host.is_empty() {
            for h in host.split(',') {
                t.hosts
                    .push(host_port(h).ok_or_else(|| bad("expected host:port[,host:port...]"))?);
            }
        }
        let path = path.trim_end_matches('/');
        if !path.is_empty() {
            t.db =
                Some(path.parse().map_err(|_| {
                    bad("the path must be a database number (redis://host:6379/2)")
                })?);
        }
        Ok(t)
    }
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((u, _)) => format!("{scheme}://{u}:***@{host}{path}"),
            None => format!("{scheme}://***@{host}{path}"),
        },
        None => url.to_owned(),
    }
}

fn read_file(setting: &str, path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("redis.{setting} {path:?}: {e}"),
        )
    })
}

/// One publish on its way to the writer.
struct Outgoing {
    cmd: ::redis::Cmd,
    topic: String,
    reply: oneshot::Sender<Result<()>>,
}

/// `redis://` and `redis+pubsub://`.
pub(crate) struct RedisBackend {
    shared: Arc<Shared>,
    mode: Mode,
    queue: flume::Sender<Outgoing>,
    writer_busy: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<()>,
    close_timeout: Duration,
}

impl RedisBackend {
    pub(crate) async fn open(
        config: &Config,
        state: &watch::Sender<ConnectionState>,
        mode: Mode,
    ) -> Result<Self> {
        let shared = Arc::new(if mode == Mode::ClusterStreams {
            connect_cluster(config, state).await?
        } else {
            connect(config, state).await?
        });
        let (queue, rx) = flume::bounded(QUEUE_MAX);
        let writer_busy = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(writer(shared.clone(), rx, writer_busy.clone()));
        Ok(RedisBackend {
            shared,
            mode,
            queue,
            writer_busy,
            writer,
            close_timeout: Config::duration(config.close_timeout_ms),
        })
    }
}

/// The servers of the URL (or of `redis.addrs`), the TLS files and the credentials.
struct Endpoints {
    target: Target,
    hosts: Vec<(String, u16)>,
    tls: bool,
    ca: Option<Vec<u8>>,
    client_tls: Option<(Vec<u8>, Vec<u8>)>,
    username: Option<String>,
    password: Option<String>,
}

impl Endpoints {
    fn of(config: &Config) -> Result<Endpoints> {
        let target = Target::parse(&config.url)?;
        let r = &config.redis;
        let hosts = if r.addrs.is_empty() {
            target.hosts.clone()
        } else {
            r.addrs
                .iter()
                .map(|a| {
                    host_port(a).ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidConfig,
                            format!("redis.addrs: {a:?} is not host:port"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        if hosts.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "url {:?}: no server given (expected e.g. redis://127.0.0.1:6379, or \
                     redis.addrs)",
                    target.shown
                ),
            ));
        }
        let ca = r
            .tls_ca
            .as_deref()
            .map(|p| read_file("tls_ca", p))
            .transpose()?;
        let client_tls = match (&r.tls_cert, &r.tls_key) {
            (Some(c), Some(k)) => Some((read_file("tls_cert", c)?, read_file("tls_key", k)?)),
            _ => None,
        };
        Ok(Endpoints {
            tls: target.tls || r.tls_ca.is_some() || r.tls_cert.is_some(),
            username: r.username.clone().or(target.username.clone()),
            password: r.password.clone().or(target.password.clone()),
            target,
            hosts,
            ca,
            client_tls,
        })
    }

    fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        if self.tls {
            ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_owned(), port)
        }
    }

    fn certificates(&self) -> ::redis::TlsCertificates {
        ::redis::TlsCertificates {
            client_tls: self.client_tls.clone().map(|(client_cert, client_key)| {
                ::redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.ca.clone(),
        }
    }
}

/// The shared state of a connected bus.
fn shared(
    config: &Config,
    state: &watch::Sender<ConnectionState>,
    client: Connector,
    conn: Conn,
    shown_url: String,
) -> Shared {
    let prefix = if config.prefix.is_empty() {
        DEFAULT_PREFIX
    } else {
        config.prefix.as_str()
    };
    Shared {
        client,
        conn: Arc::new(parking_lot::Mutex::new(conn)),
        renewing: Arc::default(),
        wire_prefix: format!("{prefix}."),
        shown_url,
        cfg: config.redis.clone(),
        name: if config.name.is_empty() {
            "polybus".to_owned()
        } else {
            config.name.clone()
        },
        connect_timeout: Config::duration(config.connect_timeout_ms.max(1)),
        command_timeout: Config::duration(config.redis.command_timeout_ms),
        state: state.clone(),
        cleanups: Cleanups::default(),
        runtime: tokio::runtime::Handle::current(),
    }
}

/// Connects to a Redis Cluster through any of the listed nodes, checking the credentials.
/// Commands go to the node of their key; the cluster's topology is followed as it changes.
async fn connect_cluster(
    config: &Config,
    state: &watch::Sender<ConnectionState>,
) -> Result<Shared> {
    let ep = Endpoints::of(config)?;
    let r = &config.redis;
    if r.db.or(ep.target.db).is_some_and(|d| d != 0) {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            "redis.db: a Redis Cluster has only database 0",
        ));
    }
    let hosts: Vec<String> = ep.hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    let shown = format!(
        "{}://{}",
        if ep.tls {
            "rediss+cluster"
        } else {
            "redis+cluster"
        },
        hosts.join(",")
    );
    let bad = |e: RedisError| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("redis cluster {shown}: {e}"),
        )
    };
    let mut nodes = Vec::new();
    for (h, p) in &ep.hosts {
        nodes.push(ep.addr(h, *p).into_connection_info().map_err(bad)?);
    }
    let connect_timeout = Config::duration(config.connect_timeout_ms.max(1));
    // Blocking stream reads wait up to `block_ms` for an answer.
    let response_timeout = Config::duration(r.command_timeout_ms + r.block_ms);
    let mut builder = ClusterClient::builder(nodes)
        .connection_timeout(connect_timeout)
        .response_timeout(response_timeout)
        .retries(u32::try_from(r.max_retries).unwrap_or(u32::MAX));
    if let Some(u) = &ep.username {
        builder = builder.username(u);
    }
    if let Some(p) = &ep.password {
        builder = builder.password(p);
    }
    if ep.tls {
        builder = builder
            .tls(::redis::TlsMode::Secure)
            .certs(ep.certificates());
    }
    let client = builder.build().map_err(bad)?;
    let probe = async {
        let mut c = client.get_async_connection().await?;
        ::redis::cmd("PING").query_async::<Value>(&mut c).await?;
        Ok::<_, RedisError>(c)
    };
    match tokio::time::timeout(connect_timeout, probe).await {
        Ok(Ok(conn)) => Ok(shared(
            config,
            state,
            Connector::Cluster(client),
            Conn::Cluster(conn, connect_timeout + response_timeout),
            shown,
        )),
        Ok(Err(e)) => Err(redis_error(&format!("cannot connect to {shown}"), &e)),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "cannot connect to {shown}: no answer within {} ms",
                connect_timeout.as_millis()
            ),
        )),
    }
}

/// Connects to the first server of the list that answers, checking the credentials.
async fn connect(config: &Config, state: &watch::Sender<ConnectionState>) -> Result<Shared> {
    let ep = Endpoints::of(config)?;
    let target = &ep.target;
    let r = &config.redis;
    let (tls, ca, client_tls) = (ep.tls, ep.ca.clone(), ep.client_tls.clone());
    let mut settings = RedisConnectionInfo::default().set_db(r.db.or(target.db).unwrap_or(0));
    if let Some(u) = r.username.as_ref().or(target.username.as_ref()) {
        settings = settings.set_username(u);
    }
    if let Some(p) = r.password.as_ref().or(target.password.as_ref()) {
        settings = settings.set_password(p);
    }
    let connect_timeout = Config::duration(config.connect_timeout_ms.max(1));
    let command_timeout = Config::duration(r.command_timeout_ms);
    let mut last: Option<Error> = None;
    for (host, port) in ep.hosts.clone() {
        let shown = format!("{}://{host}:{port}", if tls { "rediss" } else { "redis" });
        let addr = if tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), port)
        };
        let bad = |e: RedisError| redis_error(&format!("redis server {shown}"), &e);
        let info = addr
            .into_connection_info()
            .map_err(bad)?
            .set_redis_settings(settings.clone());
        let client = if tls {
            Client::build_with_tls(
                info,
                ::redis::TlsCertificates {
                    client_tls: client_tls.clone().map(|(client_cert, client_key)| {
                        ::redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: ca.clone(),
                },
            )
        } else {
            Client::open(info)
        }
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("redis server {shown}: {e}"),
            )
        })?;
        // One plain connection first: it reports a refused password or an unreachable
        // server at once, where the reconnecting manager would keep trying.
        let probe = async {
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(command_timeout));
            let mut c = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            ::redis::cmd("PING").query_async::<Value>(&mut c).await?;
            let manager = ConnectionManager::new_with_config(
                client.clone(),
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout))
                    .set_number_of_retries(r.max_retries)
                    .set_max_delay(Duration::from_secs(2)),
            )
            .await?;
            Ok::<_, RedisError>(manager)
        };
        match tokio::time::timeout(connect_timeout, probe).await {
            Ok(Ok(conn)) => {
                return Ok(shared(
                    config,
                    state,
                    Connector::Single(client),
                    Conn::Managed(conn),
                    shown,
                ));
            }
            Ok(Err(e)) => {
                let err = redis_error(&format!("cannot connect to {shown}"), &e);
                if err.kind() == ErrorKind::Auth {
                    return Err(err);
                }
                last = Some(err);
            }
            Err(_) => {
                last = Some(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "cannot connect to {shown}: no answer within {} ms",
                        connect_timeout.as_millis()
                    ),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::new(ErrorKind::Connection, "no Redis server to connect to")))
}

/// Writes queued publishes in pipelines, in order, and answers each with its own reply.
async fn writer(shared: Arc<Shared>, rx: flume::Receiver<Outgoing>, busy: Arc<AtomicBool>) {
    while let Ok(first) = rx.recv_async().await {
        busy.store(true, Ordering::Release);
        // The current shared connection (it may have been renewed since the last batch).
        let mut conn = shared.conn();
        let mut batch = vec![first];
        while batch.len() < PIPELINE_MAX {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut cluster_failed = false;
        let result: ::redis::RedisResult<Vec<::redis::RedisResult<Value>>> = if conn.is_cluster() {
            // A pipeline goes to one node. The XADDs of one stream (one key, one slot, one
            // node) go in one pipeline, in order, so each stream keeps the publish order;
            // different streams' pipelines are in flight at once.
            let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
            for (i, o) in batch.iter().enumerate() {
                match groups.iter_mut().find(|(t, _)| *t == o.topic.as_str()) {
                    Some((_, idxs)) => idxs.push(i),
                    None => groups.push((o.topic.as_str(), vec![i])),
                }
            }
            let sends = groups.into_iter().map(|(_, idxs)| {
                let mut pipe = ::redis::pipe();
                pipe.ignore_errors();
                for &i in &idxs {
                    pipe.add_command(batch[i].cmd.clone());
                }
                let mut c = conn.clone();
                async move {
                    let r: ::redis::RedisResult<Vec<::redis::RedisResult<Value>>> =
                        pipe.query_async(&mut c).await;
                    (idxs, r)
                }
            });
            let mut replies: Vec<Option<::redis::RedisResult<Value>>> =
                (0..batch.len()).map(|_| None).collect();
            let mut failed = None;
            for (idxs, r) in futures::future::join_all(sends).await {
                match r {
                    Ok(rs) => {
                        for (i, r) in idxs.into_iter().zip(rs) {
                            replies[i] = Some(r);
                        }
                    }
                    Err(e) => {
                        for i in idxs {
                            replies[i] = Some(Err(::redis::RedisError::from((
                                ::redis::ErrorKind::Io,
                                "pipeline failed",
                                e.to_string(),
                            ))));
                        }
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                shared.note(Some(&e));
                cluster_failed = true;
            }
            Ok(replies
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(::redis::RedisError::from((
                            ::redis::ErrorKind::Io,
                            "no reply",
                        )))
                    })
                })
                .collect())
        } else {
            let mut pipe = ::redis::pipe();
            pipe.ignore_errors();
            for o in &mut batch {
                pipe.add_command(std::mem::replace(&mut o.cmd, ::redis::Cmd::new()));
            }
            pipe.query_async(&mut conn).await
        };
        match result {
            Ok(replies) => {
                if !cluster_failed {
                    shared.note(None);
                }
                let mut replies = replies.into_iter();
                for o in batch {
                    let r = match replies.next() {
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(redis_error(&format!("publish on {:?}", o.topic), &e)),
                        None => Err(Error::new(
                            ErrorKind::Backend,
                            format!("publish on {:?}: the server sent no reply", o.topic),
                        )),
                    };
                    let _ = o.reply.send(r);
                }
            }
            Err(e) => {
                shared.note(Some(&e));
                for o in batch {
                    let _ = o
                        .reply
                        .send(Err(redis_error(&format!("publish on {:?}", o.topic), &e)));
                }
            }
        }
        busy.store(false, Ordering::Release);
    }
}

impl Backend for RedisBackend {
    fn publish(&self, message: Arc<Message>) -> Publishing {
        let cmd = match self.mode {
            Mode::Streams | Mode::ClusterStreams => streams::xadd(&self.shared, &message),
            Mode::PubSub => pubsub::publish(&self.shared, &message),
        };
        let (reply, rx) = oneshot::channel();
        let out = Outgoing {
            cmd,
            topic: message.topic.clone(),
            reply,
        };
        let replied = async move { rx.await.unwrap_or_else(|_| Err(Error::closed("bus"))) };
        match self.queue.try_send(out) {
            Ok(()) => Publishing::Submitted(Box::pin(replied)),
            Err(flume::TrySendError::Full(out)) => {
                let queue = self.queue.clone();
                Publishing::Pending(Box::pin(async move {
                    queue
                        .send_async(out)
                        .await
                        .map_err(|_| Error::closed("bus"))?;
                    replied.await
                }))
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                Publishing::Done(Err(Error::closed("bus")))
            }
        }
    }

    fn subscribe<'a>(
        &'a self,
        pattern: &'a Pattern,
        options: &'a SubscribeOptions,
    ) -> BoxFut<'a, Result<Subscribed>> {
        Box::pin(async move {
            match self.mode {
                Mode::Streams | Mode::ClusterStreams => {
                    streams::subscribe(&self.shared, pattern, options).await
                }
                Mode::PubSub => pubsub::subscribe(&self.shared, pattern, options).await,
            }
        })
    }

    fn close(&self) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            let limit = self.close_timeout.min(Duration::from_secs(5));
            let deadline = tokio::time::Instant::now() + limit;
            // Replies to what was published (dead letters during the drain among them).
            while (!self.queue.is_empty() || self.writer_busy.load(Ordering::Acquire))
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            self.writer.abort();
            // Broadcast groups being destroyed, consumers being removed.
            let c = &self.shared.cleanups;
            while c.running.load(Ordering::Acquire) > 0 {
                let wait = c.done.notified();
                if c.running.load(Ordering::Acquire) == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, wait).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_hidden() {
        let t = Target::parse("redis://svc:p%40ss@127.0.0.1:6390/2").unwrap();
        assert_eq!(t.hosts, [("127.0.0.1".to_owned(), 6390)]);
        assert_eq!(t.username.as_deref(), Some("svc"));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.db, Some(2));
        assert!(!t.tls);
        assert_eq!(t.shown, "redis://svc:***@127.0.0.1:6390/2");
        let t = Target::parse("rediss+pubsub://:secret@example.com").unwrap();
        assert!(t.tls);
        assert_eq!(t.hosts, [("example.com".to_owned(), 6379)]);
        assert_eq!(t.username, None);
        assert_eq!(t.password.as_deref(), Some("secret"));
        assert!(Target::parse("redis://h:1/x").is_err());
        assert!(Target::parse("redis://h:1?db=2").is_err());
        assert_eq!(Target::parse("redis://").unwrap().hosts, []);
        assert_eq!(host_port("[::1]:7000"), Some(("::1".to_owned(), 7000)));
    }
}
