//! A real browser for the tests: Debian's chromium, headless, driven through chromium-driver's
//! chromedriver with fantoccini.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Map, json};

/// A chromedriver of the test's own, with a session open in a headless chromium.
pub(crate) struct Browser {
    chromedriver: Child,
    client: Client,
    /// Their temporary files (chromium's profile among them), removed with them.
    tmp: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session in a headless chromium.
    pub(crate) async fn start() -> Browser {
        let tmp = std::env::temp_dir().join(crate::support::unique("browser-test"));
        std::fs::create_dir_all(&tmp).expect("create the browser's temporary directory");
        let (mut chromedriver, mut url) = chromedriver(&tmp);
        // Chromium refuses to run as root without --no-sandbox; containers have a small /dev/shm.
        let mut options = json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--window-size=1280,1000",
        ] });
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut capabilities = Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        // chromedriver refuses connections until it listens: retry until it gives a session. It
        // exits when another process took its port in the meantime: then it starts on another.
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match builder.connect(&url).await {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    if matches!(chromedriver.try_wait(), Ok(Some(_))) {
                        (chromedriver, url) = self::chromedriver(&tmp);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => {
                    let output = chromedriver_output(&tmp);
                    end(&mut chromedriver, &tmp);
                    panic!(
                        "no chromium session from chromedriver within 20 s: {error}\n\
                         chromedriver said, last:\n{output}"
                    );
                }
            }
        };
        Browser {
            chromedriver,
            client,
            tmp,
        }
    }

    /// The WebDriver session, to navigate, find elements and click.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Saves what the page shows to `target/screenshots/<name>.png` and returns its path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("a workspace");
        let dir = workspace.join("target").join("screenshots");
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let png = self.client.screenshot().await.expect("take a screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Closes the session (chromedriver quits its chromium), then ends chromedriver.
    pub(crate) async fn close(self) {
        self.client
            .clone()
            .close()
            .await
            .expect("close the browser session");
    }
}

impl Drop for Browser {
    /// Ends chromedriver and any chromium still running, so a failed test leaves none behind.
    fn drop(&mut self) {
        end(&mut self.chromedriver, &self.tmp);
    }
}

/// Kills chromedriver's process group (it and its chromium), and chromedriver itself should the
/// `kill` command be missing, reaps it, and removes their temporary files.
fn end(chromedriver: &mut Child, tmp: &Path) {
    let group = format!("-{}", chromedriver.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = chromedriver.kill();
    let _ = chromedriver.wait();
    let _ = std::fs::remove_dir_all(tmp);
}

/// Where chromedriver's output goes, in its temporary directory `tmp`.
fn output_path(tmp: &Path) -> PathBuf {
    tmp.join("chromedriver.log")
}

/// The last lines chromedriver wrote (every start of it in `tmp`), to say why it gave no session.
fn chromedriver_output(tmp: &Path) -> String {
    let output = std::fs::read_to_string(output_path(tmp)).unwrap_or_default();
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Starts chromedriver on a free port, with its temporary files in `tmp` and its output appended
/// to `output_path(tmp)`; with its URL.
fn chromedriver(tmp: &Path) -> (Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output_path(tmp))
        .expect("open chromedriver's log");
    let chromedriver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .env("TMPDIR", tmp)
        .stdout(output.try_clone().expect("share chromedriver's log"))
        .stderr(output)
        // A process group of its own, which the chromium it starts joins: `end` kills both.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| {
            let _ = std::fs::remove_dir_all(tmp);
            panic!(
                "cannot run chromedriver ({error}): install Debian's chromium and \
                 chromium-driver, as .ci/run does"
            )
        });
    (chromedriver, format!("http://127.0.0.1:{port}"))
}
