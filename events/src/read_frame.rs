//! `XREADGROUP` replies read straight from their RESP2 bytes: a [`FrameScan`] finds where a
//! reply ends as its bytes come, and [`parse_read_frame`] turns a whole one into entries.
//! redis-rs's general reply parser spends about 24,000 instructions on each entry of a read's
//! reply (callgrind, entries of 8 fields); this finds and reads one in about 11,000, most of them
//! the allocations of its fields.

use redis::{ErrorKind, RedisError, RedisResult};

use crate::StreamEntry;

/// What a reply frame's bytes say of it so far.
#[derive(Debug, Default)]
pub(crate) struct FrameScan {
    /// How far the frame is known to be whole.
    at: usize,
    /// The values still to come in each array the scan is in, the outermost first; empty before
    /// the scan starts (the frame is one value).
    remaining: Vec<i64>,
    started: bool,
}

impl FrameScan {
    /// Starts over, for the next frame (keeping its room for arrays: a reply of many frames
    /// allocates once).
    pub(crate) fn restart(&mut self) {
        self.at = 0;
        self.remaining.clear();
        self.started = false;
    }

    /// The frame's length once `bytes` (everything received, from the frame's first byte) hold
    /// all of it; `None` while more is to come. Each call goes on from where the last stopped.
    pub(crate) fn advance(&mut self, bytes: &[u8]) -> RedisResult<Option<usize>> {
        if !self.started {
            self.started = true;
            self.remaining.push(1);
        }
        while let Some(left) = self.remaining.last_mut() {
            if *left == 0 {
                self.remaining.pop();
                continue;
            }
            let Some(header) = header(bytes, self.at)? else {
                return Ok(None);
            };
            let next = match header.kind {
                b'$' if header.number >= 0 => {
                    let end = header.next + header.number as usize + 2;
                    if bytes.len() < end {
                        return Ok(None);
                    }
                    end
                }
                _ => header.next,
            };
            *left -= 1;
            self.at = next;
            if header.kind == b'*' && header.number > 0 {
                self.remaining.push(header.number);
            }
        }
        Ok(Some(self.at))
    }
}

/// A value's first line: its type byte, the number it carries (a length, a count or an integer;
/// 0 for a status or error line) and where the line ends.
struct Header {
    kind: u8,
    number: i64,
    next: usize,
}

/// The header at `at` of `bytes`, `None` if its line is not all there yet.
fn header(bytes: &[u8], at: usize) -> RedisResult<Option<Header>> {
    let Some(&kind) = bytes.get(at) else {
        return Ok(None);
    };
    // Header lines are short: a plain scan beats memchr's setup.
    let Some(length) = bytes[at..].iter().position(|&byte| byte == b'\n') else {
        return Ok(None);
    };
    let line = &bytes[at + 1..at + length];
    let line = line
        .strip_suffix(b"\r")
        .ok_or_else(|| malformed("a line without \\r"))?;
    let number = match kind {
        b'+' | b'-' => 0,
        b'$' | b'*' | b':' => integer(line)?,
        other => {
            return Err(malformed(&format!(
                "a value of type `{}` in a reply (RESP2 is expected)",
                other.escape_ascii()
            )));
        }
    };
    Ok(Some(Header {
        kind,
        number,
        next: at + length + 1,
    }))
}

/// The integer in a header line.
fn integer(line: &[u8]) -> RedisResult<i64> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', digits)) => (true, digits),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed(&format!(
            "`{}` where a number was expected",
            line.escape_ascii()
        )));
    }
    let value = digits
        .iter()
        .fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'));
    Ok(if negative { -value } else { value })
}

fn malformed(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "malformed reply from Redis",
        what.to_owned(),
    ))
}

/// A whole `XREADGROUP` reply `frame`: per stream, its entries (none when the read timed out).
/// Entries whose fields are nil (deleted while pending) come back with no fields; an error reply
/// is the error it says.
pub(crate) fn parse_read_frame(frame: &[u8]) -> RedisResult<Vec<(String, Vec<StreamEntry>)>> {
    if frame.first() == Some(&b'-') {
        return Err(redis::parse_redis_value(frame)?
            .extract_error()
            .err()
            .unwrap_or_else(|| malformed("an error reply that says no error")));
    }
    let mut cursor = Cursor { frame, at: 0 };
    let Some(streams) = cursor.array()? else {
        return Ok(Vec::new());
    };
    (0..streams)
        .map(|_| {
            cursor.expect_pair()?;
            let name = cursor.text()?;
            let count = cursor.array()?.unwrap_or(0);
            let entries = (0..count)
                .map(|_| cursor.entry())
                .collect::<RedisResult<_>>()?;
            Ok((name, entries))
        })
        .collect()
}

/// Where a parse of a whole frame is.
struct Cursor<'a> {
    frame: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    /// The next header, which must be of `kind`.
    fn next(&mut self, kind: u8) -> RedisResult<i64> {
        let header = header(self.frame, self.at)?.ok_or_else(|| malformed("a cut-off reply"))?;
        if header.kind != kind {
            return Err(malformed(&format!(
                "`{}` where `{}` was expected",
                header.kind.escape_ascii(),
                kind.escape_ascii()
            )));
        }
        self.at = header.next;
        Ok(header.number)
    }

    /// An array's length, `None` for a nil array.
    fn array(&mut self) -> RedisResult<Option<usize>> {
        let length = self.next(b'*')?;
        Ok(usize::try_from(length).ok())
    }

    /// An array of two.
    fn expect_pair(&mut self) -> RedisResult<()> {
        match self.array()? {
            Some(2) => Ok(()),
            _ => Err(malformed("a stream or entry that is not a pair")),
        }
    }

    /// A bulk string's bytes (empty for nil).
    fn bulk(&mut self) -> RedisResult<&[u8]> {
        let Ok(length) = usize::try_from(self.next(b'$')?) else {
            return Ok(&[]);
        };
        let start = self.at;
        let bytes = self
            .frame
            .get(start..start + length)
            .ok_or_else(|| malformed("a cut-off string"))?;
        self.at = start + length + 2;
        Ok(bytes)
    }

    /// A bulk string as text.
    fn text(&mut self) -> RedisResult<String> {
        String::from_utf8(self.bulk()?.to_vec()).map_err(|_| malformed("a name that is not UTF-8"))
    }

    /// One `[id, [field, value, ..]]` entry; a last field without a value is left out.
    fn entry(&mut self) -> RedisResult<StreamEntry> {
        self.expect_pair()?;
        let id = self.text()?;
        let flat = self.array()?.unwrap_or(0);
        let mut fields = Vec::with_capacity(flat / 2);
        for _ in 0..flat / 2 {
            let name = self.bulk()?.to_vec();
            fields.push((name, self.bulk()?.to_vec()));
        }
        if flat % 2 == 1 {
            self.bulk()?;
        }
        Ok(StreamEntry { id, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*4\r\n$4\r\ntype\r\n$3\r\na.b\r\n$4\r\nbody\r\n$0\r\n\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n";

    #[test]
    fn parses_a_read_with_entries_and_a_deleted_one() {
        let streams = parse_read_frame(READ).unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].0, "s");
        assert_eq!(
            streams[0].1,
            vec![
                StreamEntry {
                    id: "1-0".into(),
                    fields: vec![
                        (b"type".to_vec(), b"a.b".to_vec()),
                        (b"body".to_vec(), Vec::new())
                    ],
                },
                StreamEntry {
                    id: "2-0".into(),
                    fields: Vec::new()
                },
            ]
        );
        assert!(parse_read_frame(b"*-1\r\n").unwrap().is_empty());
    }

    #[test]
    fn finds_where_a_frame_ends_whatever_the_bytes_come_in() {
        for cut in 0..READ.len() {
            let mut scan = FrameScan::default();
            let first = scan.advance(&READ[..cut]).unwrap();
            assert_eq!(first, None, "cut at {cut}");
            assert_eq!(
                scan.advance(READ).unwrap(),
                Some(READ.len()),
                "cut at {cut}"
            );
        }
        let mut scan = FrameScan::default();
        let two = [READ, b"+OK\r\n"].concat();
        assert_eq!(scan.advance(&two).unwrap(), Some(READ.len()));
    }

    #[test]
    fn error_replies_are_their_errors() {
        let frame = b"-NOGROUP No such key 's' or consumer group 'g'\r\n";
        let mut scan = FrameScan::default();
        assert_eq!(scan.advance(frame).unwrap(), Some(frame.len()));
        let error = parse_read_frame(frame).unwrap_err();
        assert_eq!(error.code(), Some("NOGROUP"));
    }

    mod arbitrary_replies {
        use proptest::prelude::*;

        use super::*;

        /// An entry as a read gives it: an id and its flat fields, or nil (deleted while pending).
        type Entry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

        fn header(out: &mut Vec<u8>, kind: char, number: usize) {
            out.extend_from_slice(format!("{kind}{number}\r\n").as_bytes());
        }

        fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
            header(out, '$', bytes.len());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }

        /// The RESP2 reply Redis gives for `streams`.
        fn encode(streams: &[(String, Vec<Entry>)]) -> Vec<u8> {
            let mut out = Vec::new();
            header(&mut out, '*', streams.len());
            for (name, entries) in streams {
                header(&mut out, '*', 2);
                bulk(&mut out, name.as_bytes());
                header(&mut out, '*', entries.len());
                for (id, fields) in entries {
                    header(&mut out, '*', 2);
                    bulk(&mut out, id.as_bytes());
                    match fields {
                        None => out.extend_from_slice(b"*-1\r\n"),
                        Some(fields) => {
                            header(&mut out, '*', fields.len() * 2);
                            for (name, value) in fields {
                                bulk(&mut out, name);
                                bulk(&mut out, value);
                            }
                        }
                    }
                }
            }
            out
        }

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..40),
                // Line ends and RESP type bytes inside values.
                prop::collection::vec(prop::sample::select(b"\r\n$*-+:0 ".to_vec()), 0..20),
            ]
        }

        fn entry() -> impl Strategy<Value = Entry> {
            let fields = prop::collection::vec((bytes(), bytes()), 0..8);
            (
                "[0-9]{1,13}-[0-9]{1,3}",
                prop::option::weighted(0.9, fields),
            )
        }

        proptest! {
            #[test]
            fn are_found_whole_and_read_back_as_written(
                streams in prop::collection::vec(("[a-z:]{1,12}", prop::collection::vec(entry(), 0..6)), 0..4),
                cut in any::<prop::sample::Index>(),
            ) {
                let reply = encode(&streams);
                // Cut anywhere, the frame is not whole yet; with the rest (and more behind it), it
                // ends where it does.
                let cut = cut.index(reply.len());
                let mut scan = FrameScan::default();
                prop_assert_eq!(scan.advance(&reply[..cut]).unwrap(), None);
                let followed = [reply.as_slice(), b"+OK\r\n"].concat();
                prop_assert_eq!(scan.advance(&followed).unwrap(), Some(reply.len()));
                let expected: Vec<(String, Vec<StreamEntry>)> = streams
                    .into_iter()
                    .map(|(name, entries)| {
                        let entries = entries
                            .into_iter()
                            .map(|(id, fields)| StreamEntry { id, fields: fields.unwrap_or_default() })
                            .collect();
                        (name, entries)
                    })
                    .collect();
                prop_assert_eq!(parse_read_frame(&reply).unwrap(), expected);
            }
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_waits() {
        let mut scan = FrameScan::default();
        let error = scan.advance(b"%1\r\n").unwrap_err();
        assert!(error.to_string().contains("type `%`"), "{error}");
        assert!(FrameScan::default().advance(b"*x\r\n").is_err());
        assert!(parse_read_frame(b"*1\r\n*3\r\n").is_err());
        assert!(parse_read_frame(b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0").is_err());
    }
}
