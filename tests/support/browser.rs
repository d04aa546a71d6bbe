//! A real browser for the tests: Debian's chromium, headless, driven through chromium-driver's
//! chromedriver with the few W3C WebDriver commands the tests use, as JSON over HTTP.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

/// The key under which WebDriver names a found element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long [`Browser::wait_for`] looks for an element.
const WAIT: Duration = Duration::from_secs(30);

/// A chromedriver of the test's own, with a session open in a headless chromium.
pub(crate) struct Browser {
    chromedriver: Child,
    http: reqwest::Client,
    /// The session's URL, which its commands' paths follow.
    session: String,
    /// Their temporary files (chromium's profile among them), removed with them.
    tmp: PathBuf,
}

/// How to find an element.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Locator<'a> {
    /// By CSS selector.
    Css(&'a str),
    /// By XPath expression.
    XPath(&'a str),
}

/// An element found on the page.
pub(crate) struct Element<'a> {
    browser: &'a Browser,
    /// Its path under the session.
    path: String,
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
        let capabilities =
            json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": options } } });
        let http = reqwest::Client::new();
        // chromedriver refuses connections until it listens: retry until it gives a session. It
        // exits when another process took its port in the meantime: then it starts on another.
        let deadline = Instant::now() + Duration::from_secs(20);
        let session = loop {
            let answer = command(
                &http,
                Method::POST,
                &format!("{url}/session"),
                Some(&capabilities),
            )
            .await;
            match answer.map(|value| value["sessionId"].as_str().map(str::to_owned)) {
                Ok(Some(id)) => break format!("{url}/session/{id}"),
                Ok(None) => panic!("chromedriver gave a session without an id"),
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
            http,
            session,
            tmp,
        }
    }

    /// Runs the session's command at `path` (such as `url`, or `element/<id>/click`).
    async fn run(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, String> {
        command(
            &self.http,
            method,
            &format!("{}/{path}", self.session),
            body,
        )
        .await
    }

    /// Opens `url`.
    pub(crate) async fn goto(&self, url: &str) -> Result<(), String> {
        self.run(Method::POST, "url", Some(&json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Goes back to the page before.
    pub(crate) async fn back(&self) -> Result<(), String> {
        self.run(Method::POST, "back", Some(&json!({})))
            .await
            .map(drop)
    }

    /// The page's HTML as the browser holds it now.
    pub(crate) async fn source(&self) -> Result<String, String> {
        text(self.run(Method::GET, "source", None).await?)
    }

    /// The first element `locator` finds on the page.
    pub(crate) async fn find(&self, locator: Locator<'_>) -> Result<Element<'_>, String> {
        let (using, value) = match locator {
            Locator::Css(css) => ("css selector", css),
            Locator::XPath(xpath) => ("xpath", xpath),
        };
        let found = self
            .run(
                Method::POST,
                "element",
                Some(&json!({ "using": using, "value": value })),
            )
            .await?;
        let id = found[ELEMENT]
            .as_str()
            .ok_or_else(|| format!("no element id in {found}"))?;
        Ok(Element {
            browser: self,
            path: format!("element/{id}"),
        })
    }

    /// The first element `locator` finds, looking again until one is there or 30 s passed.
    pub(crate) async fn wait_for(&self, locator: Locator<'_>) -> Result<Element<'_>, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.find(locator).await;
            if found.is_ok() || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves what the page shows to `target/screenshots/<name>.png` and returns its path.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("a workspace");
        let dir = workspace.join("target").join("screenshots");
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        let encoded = self
            .run(Method::GET, "screenshot", None)
            .await
            .and_then(text)
            .expect("take a screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("a screenshot in base64");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Closes the session (chromedriver quits its chromium), then ends chromedriver.
    pub(crate) async fn close(self) {
        command(&self.http, Method::DELETE, &self.session, None)
            .await
            .expect("close the browser session");
    }
}

impl Element<'_> {
    /// Clicks it.
    pub(crate) async fn click(&self) -> Result<(), String> {
        let path = format!("{}/click", self.path);
        self.browser
            .run(Method::POST, &path, Some(&json!({})))
            .await
            .map(drop)
    }

    /// Types `keys` into it.
    pub(crate) async fn send_keys(&self, keys: &str) -> Result<(), String> {
        let path = format!("{}/value", self.path);
        self.browser
            .run(Method::POST, &path, Some(&json!({ "text": keys })))
            .await
            .map(drop)
    }

    /// The text it shows.
    pub(crate) async fn text(&self) -> Result<String, String> {
        let path = format!("{}/text", self.path);
        text(self.browser.run(Method::GET, &path, None).await?)
    }
}

/// Sends a WebDriver command to `url`: its value, or the error chromedriver or the connection
/// gave.
async fn command(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(body);
    }
    let answer = request
        .send()
        .await
        .map_err(|error| format!("{method} {url}: {error}"))?;
    let status = answer.status();
    let mut reply: Value = answer
        .json()
        .await
        .map_err(|error| format!("{method} {url}: {status}, not JSON: {error}"))?;
    let value = reply["value"].take();
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!(
            "{method} {url}: {status}: {} ({})",
            value["error"], value["message"]
        ))
    }
}

/// A command's value that is text.
fn text(value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("not text: {other}")),
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
