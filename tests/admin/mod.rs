//! `events serve`, run as a process against a real redis-server and driven over HTTP (and, in
//! `browser`, from a real browser).

mod actions;
mod browser;
mod health;
mod ingest;
mod pages;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

/// The token tests start admins with.
pub(crate) const TOKEN: &str = "test-token-0123456789";

/// An `events serve` process, killed when dropped.
pub(crate) struct Admin {
    child: Child,
    /// Its address, such as `http://127.0.0.1:43210`.
    pub(crate) base: String,
    client: reqwest::Client,
}

/// An answer: its status, headers and body.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Admin {
    /// Starts `events serve` against `url` with `args`, allowing changes with [`TOKEN`] when
    /// `token`; returns once it listens.
    pub(crate) fn start(url: &str, token: bool, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_events"));
        command
            .args(["--url", url, "serve", "--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("EVENTS_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if token {
            command.env("EVENTS_ADMIN_TOKEN", TOKEN);
        }
        let mut child = command.spawn().expect("run events serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .strip_prefix("events admin listening on ")
            .unwrap_or_else(|| panic!("events serve did not start: {line:?}"))
            .to_owned();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            child,
            base,
            client,
        }
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the admin answers");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    /// `GET path` (with a query), as `session` when given.
    pub(crate) async fn get(&self, path: &str, session: Option<&Session>) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(session) = session {
            request = request.header(header::COOKIE, &session.cookie);
        }
        Self::answer(request).await
    }

    /// `GET path`, which must answer 200; its body.
    pub(crate) async fn page(&self, path: &str, session: Option<&Session>) -> String {
        let answer = self.get(path, session).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {path}: {}", answer.body);
        answer.body
    }

    /// `POST path` with a form of `fields`, as `session` when given (its CSRF token is not
    /// added: pass it among the fields).
    pub(crate) async fn post_form(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        session: Option<&Session>,
    ) -> Answer {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .form(fields);
        if let Some(session) = session {
            request = request.header(header::COOKIE, &session.cookie);
        }
        Self::answer(request).await
    }

    /// `POST path` with a JSON body, with `bearer` as the token when given.
    pub(crate) async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
    ) -> Answer {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        Self::answer(request).await
    }

    /// Logs in with [`TOKEN`]: the session cookie and the CSRF token its pages carry.
    pub(crate) async fn login(&self) -> Session {
        let answer = self.post_form("/login", &[("token", TOKEN)], None).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let mut session = Session {
            cookie: cookie.split(';').next().unwrap().to_owned(),
            csrf: String::new(),
        };
        let page = self.page("/", Some(&session)).await;
        session.csrf = hidden_value(&page, "csrf").expect("a logged-in page carries a CSRF token");
        session
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A logged-in browser's cookie and CSRF token.
pub(crate) struct Session {
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

/// The value of the first hidden input `name` in `page`.
pub(crate) fn hidden_value(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    let end = page[start..].find('"')?;
    Some(page[start..start + end].to_owned())
}
