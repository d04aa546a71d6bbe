//! HTML for the admin's pages: every string from Redis or a request goes through [`text`] (or
//! [`query`] inside a link), so an entry's content shows as text and never becomes markup.

use std::fmt::{self, Display, Write};

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::printable::printable;

/// `value` escaped for HTML text and attribute values, with control characters shown escaped.
pub(crate) fn text(value: &str) -> Text<'_> {
    Text(value)
}

/// A string shown as text in HTML; see [`text`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Text<'a>(&'a str);

impl Display for Text<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for character in printable(self.0).chars() {
            match character {
                '&' => formatter.write_str("&amp;")?,
                '<' => formatter.write_str("&lt;")?,
                '>' => formatter.write_str("&gt;")?,
                '"' => formatter.write_str("&quot;")?,
                '\'' => formatter.write_str("&#39;")?,
                other => formatter.write_char(other)?,
            }
        }
        Ok(())
    }
}

/// A link's query string of `pairs`, percent-encoded and escaped for an `href`.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let encoded = serde_urlencoded::to_string(pairs).unwrap_or_default();
    // Percent-encoding leaves `&` between pairs, which an attribute writes as `&amp;`.
    encoded.replace('&', "&amp;")
}

/// A whole page: `title`, the navigation, and `body` (already HTML).
#[derive(Debug)]
pub(crate) struct Page {
    title: String,
    body: String,
    mode: String,
}

impl Page {
    /// A page titled `title` (escaped here) around `body`, with `mode` (HTML: what the viewer
    /// may do, see `Viewer::mode`) in its header.
    pub(crate) fn new(title: &str, body: String, mode: String) -> Self {
        Self {
            title: text(title).to_string(),
            body,
            mode,
        }
    }
}

/// The pages' look: small, readable, no external resources.
const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}\
header{background:#1d232b;color:#fff;padding:10px 24px;display:flex;gap:20px;align-items:center}\
header a{color:#fff;text-decoration:none}header .mode{margin-left:auto;font-size:12px;opacity:.8}\
main{padding:16px 24px;max-width:1200px}h1{font-size:20px;margin:8px 0 16px}h2{font-size:16px;margin:24px 0 8px}\
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:12px}\
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6ea;vertical-align:top}\
th{background:#eef0f3;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
pre{background:#fff;border:1px solid #e3e6ea;padding:10px;overflow:auto;white-space:pre-wrap;word-break:break-all}\
form.inline{display:inline}input,select,button{font:inherit;padding:3px 8px}\
button.danger{background:#b42318;color:#fff;border:0;border-radius:3px;padding:5px 12px}\
button{cursor:pointer}.muted{color:#6b7480}.warn{color:#b42318;font-weight:600}.ok{color:#067647;font-weight:600}\
.notice{background:#fff8e6;border:1px solid #f0c36d;padding:8px 12px;margin:8px 0}\
nav.pages a{margin-right:12px}code{font-size:13px}";

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\">\
             <title>{title} · events admin</title><style>{STYLE}</style></head><body>\
             <header><a href=\"/\"><b>events admin</b></a><a href=\"/\">Streams</a>\
             <a href=\"/health\">Health</a><a href=\"/metrics\">Metrics</a>{mode}</header>\
             <main><h1>{title}</h1>{body}</main></body></html>",
            title = self.title,
            body = self.body,
            mode = self.mode,
        );
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_control_characters_are_escaped() {
        assert_eq!(
            text("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(text("a\u{1b}[2Jb\n").to_string(), "a\\e[2Jb\\n");
        assert_eq!(text("café").to_string(), "café");
    }

    #[test]
    fn link_queries_are_encoded() {
        assert_eq!(
            query(&[("stream", "{o}:dlq"), ("type", "a&b<")]),
            "stream=%7Bo%7D%3Adlq&amp;type=a%26b%3C"
        );
    }
}
