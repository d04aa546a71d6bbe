//! A consumer's reads on a connection of their own, to a single Redis over plain TCP: the
//! `XREADGROUP` replies are read from the socket and parsed by [`crate::read_frame`], at a small
//! part of the CPU redis-rs's general parser takes for them. The connection is opened (and
//! authenticated) at the first read and after any failure; a read that fails or is cancelled
//! midway closes it, so that no half-read reply is ever taken for the next.

use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, ConnectionAddr, ConnectionInfo, RedisResult, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::StreamEntry;
use crate::read_frame::{FrameScan, parse_read_frame};

/// The most a connection takes to open, as for the consumer's other connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The least room made for each read from the socket.
const READ_SIZE: usize = 64 * 1024;

/// The most buffer space a connection keeps between reads: a batch of 500 ordinary entries
/// fits in a fifth of it.
const KEPT_BUFFER: usize = 1024 * 1024;

/// Where reads go, and the connection they take; cheap to clone, clones share the connection.
#[derive(Debug, Clone)]
pub(crate) struct DirectReader {
    info: Arc<ConnectionInfo>,
    host: Arc<str>,
    port: u16,
    response_timeout: Duration,
    socket: Arc<Mutex<Option<Socket>>>,
}

/// An open, authenticated connection and the bytes read from it.
#[derive(Debug)]
struct Socket {
    stream: TcpStream,
    received: Vec<u8>,
}

impl DirectReader {
    /// A reader for the server `info` names, if it is one server reached over plain TCP; replies
    /// are given up on after `response_timeout`.
    pub(crate) fn for_server(info: &ConnectionInfo, response_timeout: Duration) -> Option<Self> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        Some(Self {
            host: Arc::from(host.as_str()),
            port: *port,
            info: Arc::new(info.clone()),
            response_timeout,
            socket: Arc::default(),
        })
    }

    /// Runs `command`, an `XREADGROUP`: per stream, its entries.
    pub(crate) async fn read(&self, command: &Cmd) -> RedisResult<Vec<(String, Vec<StreamEntry>)>> {
        let mut slot = self.socket.lock().await;
        let mut socket = match slot.take() {
            Some(socket) => socket,
            None => self.open().await?,
        };
        let frame = socket.exchange(command, self.response_timeout).await?;
        let read = parse_read_frame(&socket.received[..frame]);
        socket.received.clear();
        // A reply of huge entries leaves no buffer of its size behind.
        socket.received.shrink_to(KEPT_BUFFER);
        *slot = Some(socket);
        read
    }

    /// Connects, then authenticates and selects the database as the server's settings say.
    async fn open(&self) -> RedisResult<Socket> {
        let address = (&*self.host, self.port);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| timed_out("connecting"))??;
        stream.set_nodelay(true)?;
        let mut socket = Socket {
            stream,
            received: Vec::new(),
        };
        let settings = self.info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            auth.arg(settings.username()).arg(password);
            socket.expect_ok(&auth, self.response_timeout).await?;
        }
        if settings.db() != 0 {
            let mut select = redis::cmd("SELECT");
            select.arg(settings.db());
            socket.expect_ok(&select, self.response_timeout).await?;
        }
        Ok(socket)
    }
}

impl Socket {
    /// Sends `command` and reads its reply, within `timeout`: the reply's length in `received`.
    async fn exchange(&mut self, command: &Cmd, timeout: Duration) -> RedisResult<usize> {
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&command.get_packed_command()).await?;
            let mut scan = FrameScan::default();
            loop {
                if let Some(length) = scan.advance(&self.received)? {
                    return Ok(length);
                }
                self.received.reserve(READ_SIZE);
                if self.stream.read_buf(&mut self.received).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
        })
        .await
        .map_err(|_| timed_out("waiting for a reply"))?
    }

    /// Runs `command`, a handshake's, whose reply is `OK` unless it failed.
    async fn expect_ok(&mut self, command: &Cmd, timeout: Duration) -> RedisResult<()> {
        let length = self.exchange(command, timeout).await?;
        let reply = redis::parse_redis_value(&self.received[..length])?;
        self.received.clear();
        match reply.extract_error()? {
            Value::Okay => Ok(()),
            other => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply to a handshake",
                format!("{other:?}"),
            ))),
        }
    }
}

/// The error of a connection that took too long, `doing` what.
fn timed_out(doing: &str) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the stream reader's connection timed out {doing}"),
    )
    .into()
}
