//! Moving an entry of any size to a stream atomically: the `XADD` and a script that finishes the
//! move (or undoes the `XADD`) run in one `MULTI`/`EXEC` transaction, so the entry's fields never
//! pass through Lua, whose calls take at most about 8,000 arguments.

use redis::aio::ConnectionLike;

/// The script that finishes a move, run right after the `XADD` in the same transaction; it sees
/// the added entry as the newest of its stream.
#[derive(Debug)]
pub(crate) struct Finish<'a> {
    /// The script's source: `EVAL`, since a transaction cannot load a script that is missing.
    pub(crate) script: &'static str,
    pub(crate) keys: Vec<&'a str>,
    pub(crate) args: Vec<Vec<u8>>,
}

/// Adds an entry with `fields` to `stream` (trimmed to about `max_len` entries unless 0), then
/// runs `finish`, in one transaction. Returns the new entry's id and the script's reply.
pub(crate) async fn add_and_finish<C: ConnectionLike>(
    connection: &mut C,
    stream: &str,
    max_len: u64,
    fields: &[(Vec<u8>, Vec<u8>)],
    finish: Finish<'_>,
) -> redis::RedisResult<(String, i64)> {
    let mut add = redis::cmd("XADD");
    add.arg(stream);
    if max_len > 0 {
        add.arg("MAXLEN").arg("~").arg(max_len);
    }
    add.arg("*");
    for (name, value) in fields {
        add.arg(name).arg(value);
    }
    let mut eval = redis::cmd("EVAL");
    eval.arg(finish.script)
        .arg(finish.keys.len())
        .arg(&finish.keys)
        .arg(&finish.args);
    redis::pipe()
        .atomic()
        .add_command(add)
        .add_command(eval)
        .query_async(connection)
        .await
}
