//! Names from the tree (folders, markers, keys) are data: shown on a terminal they must not
//! move the cursor, clear the screen or retitle the window, and in a log line they must not
//! start a new line. [`printable`] escapes what a terminal would act on; the alert text has
//! its own rules on top (`notify`: Slack's `&`, `<`, `>`).

use std::borrow::Cow;
use std::fmt::Write;

/// Whether a terminal or a log reader would act on `c` rather than show it: the C0 controls
/// (ESC, CR, LF, BS …), DEL, the C1 controls (U+0080–U+009F, CSI among them), and the
/// bidirectional overrides and isolates that reorder what follows them.
fn acts(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every character a terminal would act on written as `\u{..}` (`\n`, `\t`, `\r`
/// as themselves escaped); borrowed when there is none, as for almost every name.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(acts) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if acts(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_japanese_names_pass_as_they_are() {
        assert!(matches!(printable("ブログ/2026/.purge"), Cow::Borrowed(_)));
        assert_eq!(printable("a b&<c>"), "a b&<c>");
    }

    #[test]
    fn what_a_terminal_acts_on_is_escaped() {
        assert_eq!(printable("x\x1b[2Jy"), "x\\u{1b}[2Jy");
        assert_eq!(printable("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(printable("\u{7f}"), "\\u{7f}");
        assert_eq!(printable("abc\u{202E}gpj.exe"), "abc\\u{202e}gpj.exe");
    }
}
