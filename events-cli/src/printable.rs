//! What the tool prints of Redis's content, made safe for a terminal: entries, names and reasons
//! come from whoever can write to Redis, and a control character among them (an escape sequence
//! that retitles the window or moves the cursor) is shown escaped, never sent to the terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character escaped (`\e`, `\u{7}`, `\n` ...); unchanged, and not
/// copied, when it has none.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        if character == '\u{1b}' {
            shown.push_str("\\e");
        } else if character.is_control() {
            let _ = write!(shown, "{}", character.escape_default());
        } else {
            shown.push(character);
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("order.placed"), "order.placed");
        assert_eq!(printable("x\u{1b}]0;PWNED\u{7}"), "x\\e]0;PWNED\\u{7}");
        assert_eq!(printable("a\tb\nc"), "a\\tb\\nc");
        assert_eq!(printable("café ☕"), "café ☕");
    }
}
