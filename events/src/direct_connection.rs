//! A consumer's reads and a batched publisher's writes on a connection of their own, to a single
//! Redis over TCP or TLS: the `XREADGROUP` replies are read from the socket and parsed by
//! [`crate::read_frame`], and a batch's `XADD`s go out as the publisher packed them, their replies
//! (entry ids) read straight from the bytes, at a small part of the CPU redis-rs's general
//! encoder and parser take for them. Any other command (there are few) goes through redis-rs's
//! parser. The connection is opened (and authenticated) at the first request and after any
//! failure; a request that fails or is cancelled midway closes it, so that no half-read reply is
//! ever taken for the next. Requests take turns. The server's id of the open connection is known,
//! so that another connection can end a blocking read early (`CLIENT UNBLOCK`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisConnectionInfo, RedisFuture, RedisResult,
    Value,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::read_frame::{FrameScan, parse_read_frame};
#[cfg(feature = "tls")]
use crate::reader_tls::ReaderTls;
use crate::{Endpoint, StreamEntry};

/// The most a connection takes to open, as for the consumer's other connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The least room made for each read from the socket.
const READ_SIZE: usize = 64 * 1024;

/// The most buffer space a connection keeps between requests: a batch of 500 ordinary entries
/// fits in a fifth of it.
const KEPT_BUFFER: usize = 1024 * 1024;

/// Where requests go, and the connection they take; cheap to clone, clones share the connection.
#[derive(Debug, Clone)]
pub(crate) struct DirectConnection {
    host: Arc<str>,
    port: u16,
    /// The credentials and database the server's URL names.
    settings: Arc<RedisConnectionInfo>,
    response_timeout: Duration,
    /// TLS over the TCP connection, when the URL asks for it.
    #[cfg(feature = "tls")]
    tls: Option<ReaderTls>,
    socket: Arc<Mutex<Option<Socket>>>,
    /// The server's id of the connection last opened (0 before the first).
    client_id: Arc<AtomicU64>,
}

/// A connection's byte stream: TCP, or TLS over it.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// An open, authenticated connection and the bytes read from it.
struct Socket {
    stream: Box<dyn Duplex>,
    received: Vec<u8>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl DirectConnection {
    /// A connection for the server `info` names, if it is one server reached over TCP, or over TLS
    /// with `endpoint`'s certificates (not `#insecure`); replies are given up on after
    /// `response_timeout`.
    pub(crate) fn for_server(
        info: &ConnectionInfo,
        endpoint: &Endpoint,
        response_timeout: Duration,
    ) -> Option<Self> {
        #[cfg(feature = "tls")]
        let mut tls = None;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host, *port),
            #[cfg(feature = "tls")]
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => {
                let secured = ReaderTls::new(host, endpoint.certificates())
                    .inspect_err(
                        |error| tracing::debug!(%error, "the consumer reads through redis-rs"),
                    )
                    .ok()?;
                tls = Some(secured);
                (host, *port)
            }
            _ => return None,
        };
        #[cfg(not(feature = "tls"))]
        let _ = endpoint;
        Some(Self {
            host: Arc::from(host.as_str()),
            port,
            #[cfg(feature = "tls")]
            tls,
            settings: Arc::new(info.redis_settings().clone()),
            response_timeout,
            socket: Arc::default(),
            client_id: Arc::default(),
        })
    }

    /// The server's id of the connection requests go on, once one was opened: while a request
    /// is under way, the connection it is on.
    pub(crate) fn client_id(&self) -> Option<u64> {
        Some(self.client_id.load(Ordering::Acquire)).filter(|&id| id != 0)
    }

    /// Runs `command`, an `XREADGROUP`: per stream, its entries.
    pub(crate) async fn read(&self, command: &Cmd) -> RedisResult<Vec<(String, Vec<StreamEntry>)>> {
        self.request(&command.get_packed_command(), 1, |received, frames| {
            parse_read_frame(&received[frames[0].clone()])
        })
        .await
    }

    /// Sends `request`, `commands` commands packed one after another, and gives each one's reply:
    /// its text (a bulk string, such as an `XADD`'s entry id) or the error Redis gave.
    pub(crate) async fn send(
        &self,
        request: &[u8],
        commands: usize,
    ) -> RedisResult<Vec<RedisResult<String>>> {
        self.request(request, commands, |received, frames| {
            Ok(frames
                .iter()
                .map(|frame| text_reply(&received[frame.clone()]))
                .collect())
        })
        .await
    }

    /// Sends `request` (`replies` commands), then gives what `parse` makes of the bytes received
    /// and where each reply's frame is in them.
    async fn request<T>(
        &self,
        request: &[u8],
        replies: usize,
        parse: impl FnOnce(&[u8], &[Range<usize>]) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let mut slot = self.socket.lock().await;
        let mut socket = match slot.take() {
            Some(socket) => socket,
            None => self.open().await?,
        };
        let frames = socket
            .exchange(request, replies, self.response_timeout)
            .await?;
        let parsed = parse(&socket.received, &frames);
        socket.received.clear();
        // A reply of huge entries leaves no buffer of its size behind.
        socket.received.shrink_to(KEPT_BUFFER);
        *slot = Some(socket);
        parsed
    }

    /// Connects, then authenticates and selects the database as the server's settings say, and
    /// learns the connection's id.
    async fn open(&self) -> RedisResult<Socket> {
        self.client_id.store(0, Ordering::Release);
        let address = (&*self.host, self.port);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| timed_out("connecting"))??;
        stream.set_nodelay(true)?;
        #[cfg(feature = "tls")]
        let stream: Box<dyn Duplex> = match &self.tls {
            Some(tls) => Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(stream))
                    .await
                    .map_err(|_| timed_out("opening TLS"))??,
            ),
            None => Box::new(stream),
        };
        #[cfg(not(feature = "tls"))]
        let stream: Box<dyn Duplex> = Box::new(stream);
        let mut socket = Socket {
            stream,
            received: Vec::new(),
        };
        let settings = &self.settings;
        let mut handshake = redis::pipe();
        if let Some(password) = settings.password() {
            handshake.cmd("AUTH").arg(settings.username()).arg(password);
        }
        if settings.db() != 0 {
            handshake.cmd("SELECT").arg(settings.db());
        }
        handshake.cmd("CLIENT").arg("ID");
        let request = handshake.get_packed_pipeline();
        let commands = handshake.cmd_iter().count();
        let frames = socket
            .exchange(&request, commands, self.response_timeout)
            .await?;
        let mut replies = values(&socket.received, &frames)?;
        socket.received.clear();
        // A user not allowed `CLIENT ID` reads all the same, its reads just not ended early.
        let id = replies.pop().map(redis::from_redis_value::<u64>);
        for value in replies {
            value.extract_error()?;
        }
        let id = id.and_then(Result::ok).unwrap_or(0);
        self.client_id.store(id, Ordering::Release);
        Ok(socket)
    }
}

/// A reply's text: a bulk string's bytes read in place; any other reply through redis-rs's
/// parser, an error reply as the error.
fn text_reply(frame: &[u8]) -> RedisResult<String> {
    if frame.first() == Some(&b'$')
        && let Some(line) = frame.iter().position(|&byte| byte == b'\n')
        && let Some(text) = frame.get(line + 1..frame.len().saturating_sub(2))
        && let Ok(text) = std::str::from_utf8(text)
    {
        return Ok(text.to_owned());
    }
    let value = redis::parse_redis_value(frame)?.extract_error()?;
    Ok(redis::from_redis_value(value)?)
}

/// Each frame of `received` as redis-rs parses it.
fn values(received: &[u8], frames: &[Range<usize>]) -> RedisResult<Vec<Value>> {
    frames
        .iter()
        .map(|frame| redis::parse_redis_value(&received[frame.clone()]))
        .collect()
}

impl Socket {
    /// Sends `request` and reads `replies` replies to it, within `timeout`: where each reply's
    /// frame is in `received`.
    async fn exchange(
        &mut self,
        request: &[u8],
        replies: usize,
        timeout: Duration,
    ) -> RedisResult<Vec<Range<usize>>> {
        tokio::time::timeout(timeout, async {
            self.stream.write_all(request).await?;
            let mut frames = Vec::with_capacity(replies);
            let mut start = 0;
            let mut scan = FrameScan::default();
            while frames.len() < replies {
                if let Some(length) = scan.advance(&self.received[start..])? {
                    frames.push(start..start + length);
                    start += length;
                    scan.restart();
                    continue;
                }
                self.received.reserve(READ_SIZE);
                if self.stream.read_buf(&mut self.received).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
            Ok(frames)
        })
        .await
        .map_err(|_| timed_out("waiting for a reply"))?
    }
}

impl ConnectionLike for DirectConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut replies = self.request(&cmd.get_packed_command(), 1, values).await?;
            Ok(replies.pop().unwrap_or(Value::Nil))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut replies = self
                .request(&pipeline.get_packed_pipeline(), offset + count, values)
                .await?;
            Ok(replies.split_off(offset.min(replies.len())))
        })
    }

    fn get_db(&self) -> i64 {
        self.settings.db()
    }
}

/// The error of a connection that took too long, `doing` what.
fn timed_out(doing: &str) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the connection to Redis timed out {doing}"),
    )
    .into()
}
