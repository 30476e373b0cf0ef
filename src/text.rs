//! Names from the tree (folders, markers, keys) are data: shown on a terminal they must not
//! move the cursor, clear the screen or retitle the window, and in a log line they must not
//! start a new line. [`printable`] escapes what a terminal would act on; the alert text has
//! its own rules on top (`notify`: Slack's `&`, `<`, `>`).

use std::borrow::Cow;
use std::fmt::Write;

/// Whether a terminal or a log reader would act on `c` rather than show it: the C0 controls
/// (ESC, CR, LF, BS …), DEL, the C1 controls (U+0080–U+009F, CSI among them), and the
/// bidirectional overrides and isolates that reorder what follows them.
pub(crate) fn acts(c: char) -> bool {
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

/// A value shown with [`printable`], for a log field that holds a name from the tree:
/// `marker = %Printable(&rel)`, `folder = %Printable(path.display())`. tracing-subscriber's
/// fmt layer escapes ESC only in the message, and line breaks nowhere.
pub struct Printable<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Printable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&printable(&self.0.to_string()))
    }
}

/// The log's field formatter: the fmt layer's own layout (`message key=value …`, a `&str`
/// quoted), every value shown with [`printable`], so a field holding a name from the tree
/// (a marker, a folder, an S3 key in an error) neither drives the terminal nor starts a line.
/// For `fmt::layer().fmt_fields(..)`: the layer escapes only ESC and only in the message.
pub fn log_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() == "message" {
            write!(w, "{}", Printable(format_args!("{value:?}")))
        } else {
            write!(w, "{field}={}", Printable(format_args!("{value:?}")))
        }
    })
    .delimited(" ")
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

    #[test]
    fn a_log_field_shows_a_path_escaped() {
        let p = std::path::Path::new("a\x1b[2J/\n2099 INFO forged/.purge");
        assert_eq!(
            Printable(p.display()).to_string(),
            "a\\u{1b}[2J/\\n2099 INFO forged/.purge"
        );
        assert_eq!(Printable("blog/.purge").to_string(), "blog/.purge");
    }

    /// What the daemon's log would show (main.rs's layer, without colour) for an event in a
    /// request's span.
    fn logged(marker: &str) -> String {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .fmt_fields(log_fields());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = 1, marker = %marker);
            let _in = span.enter();
            tracing::warn!(request = 1, marker = %marker, via = "test", "origin timeout: {marker}");
        });
        let bytes = buf.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn the_log_shows_a_name_escaped_on_its_own_line() {
        let line = logged("x\x1b[2J\n2099-01-01T00:00:00Z  INFO forged/.purge");
        let shown = "x\\u{1b}[2J\\n2099-01-01T00:00:00Z  INFO forged/.purge";
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(!line.contains('\x1b'), "{line:?}");
        assert!(
            line.ends_with(&format!(
                "request{{id=1 marker={shown}}}: purgewatch::text::tests: origin timeout: \
                 {shown} request=1 marker={shown} via=\"test\"\n"
            )),
            "{line:?}"
        );
        // A plain name reads as before.
        assert!(
            logged("blog/.purge").ends_with(
                "request{id=1 marker=blog/.purge}: purgewatch::text::tests: origin timeout: \
                 blog/.purge request=1 marker=blog/.purge via=\"test\"\n"
            ),
            "{}",
            logged("blog/.purge")
        );
    }
}
