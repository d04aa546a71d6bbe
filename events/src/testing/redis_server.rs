//! A throwaway `redis-server`: started from `PATH` (or `EVENTS_TEST_SERVER`, such as a
//! `valkey-server`) on a free port, stopped and its data directory removed when dropped. With
//! `REDIS_URL` set, [`RedisServer::start`] uses that server instead and starts nothing.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A running Redis: one this process started, or the one `REDIS_URL` names.
#[derive(Debug)]
pub struct RedisServer {
    url: String,
    /// The URL of its plain (non-TLS) listener: its URL, unless it listens for TLS too.
    plain_url: String,
    child: Option<Child>,
    dir: Option<PathBuf>,
    durable: bool,
}

impl RedisServer {
    /// The server named by `REDIS_URL`, or else a new `redis-server` from `PATH`. Panics with the
    /// reason when neither is possible.
    pub fn start() -> Self {
        Self::from_env_or_start().unwrap_or_else(|reason| panic!("{reason}"))
    }

    /// Like [`RedisServer::start`], but says in one line why no server could be had.
    fn from_env_or_start() -> Result<Self, String> {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Ok(Self {
                plain_url: url.clone(),
                url,
                child: None,
                dir: None,
                durable: false,
            });
        }
        Self::spawn().map_err(|error| match error.kind() {
            io::ErrorKind::NotFound if std::env::var_os("EVENTS_TEST_SERVER").is_some() => {
                format!(
                    "EVENTS_TEST_SERVER names `{}`, which does not exist",
                    server_binary()
                )
            }
            io::ErrorKind::NotFound => {
                "redis-server is not on PATH: install it (Debian/Ubuntu: `sudo apt-get install \
                 redis-server`, macOS: `brew install redis`) or set REDIS_URL to a running Redis"
                    .to_owned()
            }
            _ => format!("could not start {}: {error}", server_binary()),
        })
    }

    /// Like [`RedisServer::start`], for programs: says in one line why no server could be had and
    /// exits with status 1.
    pub fn start_or_exit() -> Self {
        Self::from_env_or_start().unwrap_or_else(|reason| {
            eprintln!("{reason}");
            std::process::exit(1);
        })
    }

    /// The URL to connect to, such as `redis://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new `redis-server` of this process's own, even when `REDIS_URL` is set: for tests that
    /// stop and restart it.
    pub fn own() -> Self {
        Self::spawn().unwrap_or_else(|error| panic!("could not start redis-server: {error}"))
    }

    /// Like [`RedisServer::own`], but it writes every change to an append-only file, so its data
    /// survives a [`restart`](RedisServer::restart).
    pub fn own_durable() -> Self {
        let mut server = Self::own();
        server.durable = true;
        server.restart();
        server
    }

    /// Stops the server and starts it again on the same port, with the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// Stops the server; [`resume`](RedisServer::resume) starts it again.
    pub fn stop(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("only a server this process started can be stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a stopped server again on its port, with its data directory.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let port = self.port();
        let dir = self.dir.clone().expect("data directory");
        let mut command = redis_command(port, &dir);
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        let mut child = command.spawn().expect("start redis-server again");
        wait_until_ready(&mut child, port).expect("redis-server answers again");
        self.child = Some(child);
    }

    /// Starts `redis-server` on a free port, trying again on another if the port was taken meanwhile.
    fn spawn() -> io::Result<Self> {
        Self::spawn_with(|_| (Vec::new(), None))
    }

    /// The port of its plain (non-TLS) listener.
    pub fn port(&self) -> u16 {
        self.plain_url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .expect("port in url")
    }

    /// The URL of its plain (non-TLS) listener: its URL, unless it listens for TLS too.
    pub fn plain_url(&self) -> &str {
        &self.plain_url
    }

    /// Starts a server on a free port with the arguments `extra` gives for that port, trying
    /// again on another if the port was taken meanwhile; its URL is TLS's when `extra` names a
    /// TLS port.
    pub fn spawn_with(extra: impl Fn(u16) -> (Vec<String>, Option<u16>)) -> io::Result<Self> {
        Self::spawn_command(|port, dir| {
            let (args, tls_port) = extra(port);
            let mut command = redis_command(port, dir);
            command.args(args);
            (command, tls_port)
        })
    }

    /// Starts the server `command` makes for a free port and a data directory of its own, trying
    /// again on another port if it was taken meanwhile; its URL is TLS's when it names a TLS port.
    pub fn spawn_command(
        mut command: impl FnMut(u16, &Path) -> (Command, Option<u16>),
    ) -> io::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let dir =
                std::env::temp_dir().join(format!("events-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let (mut command, tls_port) = command(port, &dir);
            let mut child = command.spawn()?;
            match wait_until_ready(&mut child, port) {
                Ok(()) => {
                    let url = match tls_port {
                        Some(tls_port) => format!("rediss://127.0.0.1:{tls_port}"),
                        None => format!("redis://127.0.0.1:{port}"),
                    };
                    return Ok(Self {
                        url,
                        plain_url: format!("redis://127.0.0.1:{port}"),
                        child: Some(child),
                        dir: Some(dir),
                        durable: false,
                    });
                }
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }
}

/// Ports [`free_port`] gave out, but for the ports of servers this process has dropped since: a
/// server stopped for a restart leaves its port free for a while, and another test's server must
/// not take it then. (Ports given out for other uses, such as TLS, stay in: a test process starts
/// a few hundred servers, out of some 28,000 ports.)
static GIVEN_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port no one listens on right now, and not one given out before for a server this process
/// still holds, running or stopped.
pub fn free_port() -> io::Result<u16> {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if given_out().insert(port) {
            return Ok(port);
        }
    }
}

fn given_out() -> MutexGuard<'static, BTreeSet<u16>> {
    GIVEN_OUT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server binary tests start: `EVENTS_TEST_SERVER` (such as a `valkey-server`), or else
/// `redis-server` from `PATH`.
pub fn server_binary() -> String {
    std::env::var("EVENTS_TEST_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// The test server on `port`, keeping nothing on disk but what it is told to, in `dir`.
pub fn redis_command(port: u16, dir: &Path) -> Command {
    let mut command = Command::new(server_binary());
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // Tests stall the server with DEBUG SLEEP.
            "--enable-debug-command",
            "local",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Waits until `child`, the server started on `port`, answers PING there, or fails if it exits or
/// takes more than 10 seconds.
fn wait_until_ready(child: &mut Child, port: u16) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "redis-server exited with {status}"
            )));
        }
        // Another server may answer on the port: another test's, started on it a moment after
        // it was found free. Then `child` cannot listen on it, exits, and the caller tries
        // another port.
        if ping(port).is_ok() && server_process(port).is_none_or(|pid| pid == child.id()) {
            return Ok(());
        }
        sleep(Duration::from_millis(10));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "redis-server did not answer within 10 s",
    ))
}

fn ping(port: u16) -> io::Result<()> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0; 7];
    stream.read_exact(&mut reply)?;
    // A server that wants a password answers too.
    if &reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH") {
        Ok(())
    } else {
        Err(io::Error::other("unexpected reply to PING"))
    }
}

/// The process id the server answering on `port` gives in `INFO server`, when it tells (one that
/// wants a password first does not).
fn server_process(port: u16) -> Option<u32> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    (&stream).write_all(b"INFO server\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let length: usize = header.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut info = vec![0; length];
    reader.read_exact(&mut info).ok()?;
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|line| line.strip_prefix("process_id:")?.parse().ok())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            given_out().remove(&self.port());
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_servers_port_is_not_given_out_again_until_it_is_dropped() {
        let mut server = RedisServer::own();
        let port = server.port();
        server.stop();
        assert!(given_out().contains(&port));
        let others: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        given_out().retain(|given| !others.contains(given));
        assert!(!others.contains(&port));
        server.resume();
        drop(server);
        assert!(!given_out().contains(&port));
    }

    #[test]
    fn a_server_on_a_port_another_holds_is_not_taken_for_ready() {
        let first = RedisServer::own();
        let dir = std::env::temp_dir().join(format!("events-redis-{}-taken", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut second = redis_command(first.port(), &dir).spawn().unwrap();
        let ready = wait_until_ready(&mut second, first.port());
        let _ = second.kill();
        let _ = second.wait();
        let _ = std::fs::remove_dir_all(&dir);
        let error = ready.expect_err("the first server answered, not the second");
        assert!(error.to_string().contains("exited"), "{error}");
    }
}
