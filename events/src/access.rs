//! What a publisher or a consumer must be allowed to run in Redis, checked when it is built: a
//! user that lacks a command would otherwise fail later, or worse, run half its work. Each command
//! is checked on the keys it will be run on, without running it (`redis.acl_check_cmd`, one script
//! call for all); the first one refused is named with what it is for.

use std::sync::LazyLock;

use crate::connection::Connection;
use redis::Script;

use crate::{Error, Result};

static ACCESS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/access.lua")));

/// A command to check: its words, and what it is needed for.
pub(crate) struct Needed {
    words: Vec<String>,
    purpose: &'static str,
}

pub(crate) fn needed(purpose: &'static str, words: &[&str]) -> Needed {
    Needed {
        words: words.iter().map(|word| (*word).to_owned()).collect(),
        purpose,
    }
}

/// Checks that the user of `connection` may run each of `commands`, which a `role` (publisher,
/// consumer) needs; names the first it may not. The check is a script: a `role` that runs no
/// scripts of its own (`scripts_needed` false) is not checked when its user may run none.
pub(crate) async fn check(
    connection: &Connection,
    role: &str,
    commands: &[Needed],
    scripts_needed: bool,
) -> Result<()> {
    let mut invocation = ACCESS.prepare_invoke();
    for command in commands {
        invocation.arg(command.words.len()).arg(&command.words);
    }
    let refused: redis::RedisResult<usize> =
        invocation.invoke_async(&mut connection.unconfirmed()).await;
    let refused = match refused {
        Ok(refused) => refused,
        Err(error) if error.code() == Some("NOPERM") && !scripts_needed => {
            tracing::debug!(%error, "the Redis user may not run scripts: its permissions are not checked ahead");
            return Ok(());
        }
        Err(error) if error.code() == Some("NOPERM") => {
            return Err(Error::Config(format!(
                "the Redis user may not run EVALSHA (or SCRIPT LOAD), which a {role} needs to \
                 check its permissions and run its scripts: grant +evalsha +eval +script|load \
                 ({error})"
            )));
        }
        Err(error) => return Err(Error::Connect { source: error }),
    };
    match refused.checked_sub(1).and_then(|at| commands.get(at)) {
        None => Ok(()),
        Some(command) => Err(Error::Config(command.refusal(role))),
    }
}

impl Needed {
    /// Says that the user may not run this command, what for, and what to grant.
    fn refusal(&self, role: &str) -> String {
        let words = &self.words;
        // A command with subcommands is granted as `command|subcommand`; its key follows.
        let with_subcommand = matches!(words[0].as_str(), "XGROUP" | "XINFO" | "SCRIPT");
        let (name, key) = if with_subcommand {
            (format!("{}|{}", words[0], words[1]), words.get(2))
        } else {
            (words[0].clone(), words.get(1))
        };
        let on = match key {
            Some(key) if !matches!(name.as_str(), "EVALSHA" | "SCRIPT|LOAD") => {
                format!(" on `{key}`")
            }
            _ => String::new(),
        };
        format!(
            "the Redis user may not run `{name}`{on}, which a {role} needs {}: grant it, for \
             example `ACL SETUSER <user> +{}`; the README lists what a {role} needs",
            self.purpose,
            name.to_lowercase()
        )
    }
}
