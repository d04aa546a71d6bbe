//! Who may change things: without a token the admin is read-only; with one, a browser logs in
//! (a session cookie, and a CSRF token in every form) and a program sends
//! `Authorization: Bearer <token>`. Tokens are compared in constant time, as digests, so neither
//! their content nor their length shows in the time an answer takes.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::html::{Page, text};
use super::{Failed, Shared};

/// The session cookie's name.
const COOKIE: &str = "events_admin";

/// The token that allows changes, kept as its digest, and the values derived from a secret made
/// at start: the session cookie's and the forms' CSRF token (both die with the process).
#[derive(Debug)]
pub(crate) struct Auth {
    token: [u8; 32],
    session: String,
    csrf: String,
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

impl Auth {
    /// Changes allowed with `token`.
    pub(crate) fn new(token: &str) -> Self {
        let secret: [u8; 32] = rand::random();
        let derived = |purpose: &[u8]| hex::encode(digest(&[&secret[..], purpose].concat()));
        Self {
            token: digest(token.as_bytes()),
            session: derived(b"session"),
            csrf: derived(b"csrf"),
        }
    }

    fn is_token(&self, given: &str) -> bool {
        digest(given.as_bytes()).ct_eq(&self.token).into()
    }

    fn has_bearer(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|given| self.is_token(given.trim()))
    }

    fn has_session(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|cookies| cookies.split(';'))
            .filter_map(|cookie| cookie.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|value| value.as_bytes().ct_eq(self.session.as_bytes()).into())
    }
}

/// Who is looking at a page, for what it offers.
#[derive(Debug, Clone)]
pub(crate) enum Viewer {
    /// The admin was started without a token: nothing can be changed.
    ReadOnly,
    /// Changes need a login first.
    Guest,
    /// Logged in: forms carry this CSRF token.
    Operator { csrf: String },
}

impl Viewer {
    /// The header's note on what this viewer may do.
    pub(crate) fn mode(&self) -> String {
        match self {
            Self::ReadOnly => {
                "<span class=\"mode\">read-only (started without a token)</span>".into()
            }
            Self::Guest => {
                "<span class=\"mode\"><a href=\"/login\">Log in to make changes</a></span>".into()
            }
            Self::Operator { csrf } => format!(
                "<form class=\"mode inline\" method=\"post\" action=\"/logout\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Log out</button></form>",
                text(csrf)
            ),
        }
    }

    /// A form posting `fields` (name, value) to `action` behind a button saying `label`, with
    /// the CSRF token; `None` when this viewer may not change anything.
    pub(crate) fn form(
        &self,
        action: &str,
        fields: &[(&str, &str)],
        label: &str,
    ) -> Option<String> {
        let Self::Operator { csrf } = self else {
            return None;
        };
        let hidden: String = fields
            .iter()
            .chain([&("csrf", csrf.as_str())])
            .map(|(name, value)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    text(name),
                    text(value)
                )
            })
            .collect();
        Some(format!(
            "<form class=\"inline\" method=\"post\" action=\"{action}\">{hidden}\
             <button class=\"danger\">{}</button></form>",
            text(label)
        ))
    }
}

impl FromRequestParts<Arc<Shared>> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        admin: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        Ok(match &admin.auth {
            None => Self::ReadOnly,
            Some(auth) if auth.has_session(&parts.headers) => Self::Operator {
                csrf: auth.csrf.clone(),
            },
            Some(_) => Self::Guest,
        })
    }
}

/// Allows a change asked with `headers`: a bearer token, or a session whose form carried the
/// CSRF token `csrf`; a request from another site is refused whatever it carries.
pub(crate) fn allow_change(
    admin: &Shared,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<(), Failed> {
    let Some(auth) = &admin.auth else {
        return Err(Failed::forbidden(
            "read-only: start `events serve` with a token (EVENTS_ADMIN_TOKEN) to allow changes",
        ));
    };
    if auth.has_bearer(headers) {
        return Ok(());
    }
    if !same_site(headers) {
        return Err(Failed::forbidden(
            "refused: the request comes from another site",
        ));
    }
    if !auth.has_session(headers) {
        return Err(Failed::forbidden(
            "log in first, or send Authorization: Bearer <token>",
        ));
    }
    match csrf {
        Some(given) if bool::from(given.as_bytes().ct_eq(auth.csrf.as_bytes())) => Ok(()),
        _ => Err(Failed::forbidden(
            "the form's CSRF token is missing or wrong: reload the page and try again",
        )),
    }
}

/// Whether a browser's `Origin` (when it sends one) is this server.
fn same_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let origin = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"));
    matches!((origin, host), (Some((_, origin)), Some(host)) if origin == host)
}

/// `GET /login`: the token form.
pub(crate) async fn login_page(viewer: Viewer) -> Page {
    let body = "<form method=\"post\" action=\"/login\"><p><label>Token \
                <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus>\
                </label> <button>Log in</button></p></form>";
    Page::new("Log in", body.into(), viewer.mode())
}

/// The login form's content.
#[derive(Debug, Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// `POST /login`: a session cookie for the right token; a wrong one waits a moment (slowing
/// guessing) and is refused.
pub(crate) async fn login(State(admin): State<Arc<Shared>>, Form(login): Form<Login>) -> Response {
    match &admin.auth {
        Some(auth) if auth.is_token(&login.token) => {
            let cookie = format!(
                "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                auth.session
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Some(_) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Failed::forbidden("wrong token").into_response()
        }
        None => {
            Failed::forbidden("read-only: this admin was started without a token").into_response()
        }
    }
}

/// The logout form's content.
#[derive(Debug, Deserialize)]
pub(crate) struct Logout {
    csrf: String,
}

/// `POST /logout`: ends the session.
pub(crate) async fn logout(
    State(admin): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(logout): Form<Logout>,
) -> Result<Response, Failed> {
    allow_change(&admin, &headers, Some(&logout.csrf))?;
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}
