//! Peer-supplied text in log lines and audit records, made harmless.
//!
//! Command lines, paths, user names, signal names, source names and socket peer names come
//! from clients. Written raw, a newline in one forges a whole log line, an escape sequence
//! rewrites what a terminal shows, and a space followed by `key=value` forges a field. Every
//! peer-supplied string the agent logs goes through [`Quoted`] (bytes) or [`Clean`] (anything
//! [`Display`], e.g. an error that names a path), which print it
//!
//! * between double quotes, so it is one field whatever it contains;
//! * with `"` and `\` escaped by a backslash, and every byte outside printable ASCII
//!   (control characters, DEL, and all non-ASCII bytes) as `\xNN`, so the output is plain
//!   ASCII: no line break, no escape sequence, no bidirectional override, no look-alike
//!   character survives;
//! * cut after [`MAX_FIELD`] bytes of input, marked `...`, so one field cannot flood a line.
//!
//! The audit trail's records use the same rules ([`push_quoted`]); one implementation, so a
//! log line and its trail record read the same.

use std::fmt::{self, Display, Write as _};

/// Longest peer-supplied string kept in a log field or record (longer ones are cut).
pub const MAX_FIELD: usize = 512;

/// Bytes from a peer, printed quoted and escaped (see the module documentation).
#[derive(Clone, Copy)]
pub struct Quoted<'a>(pub &'a [u8]);

impl<'a> Quoted<'a> {
    /// A string from a peer (a socket's peer name, a decoded field).
    pub fn str(s: &'a str) -> Quoted<'a> {
        Quoted(s.as_bytes())
    }

    /// A path from a peer.
    pub fn path(p: &'a std::path::Path) -> Quoted<'a> {
        Quoted(p.as_os_str().as_encoded_bytes())
    }
}

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        let cut = self.0.len() > MAX_FIELD;
        for &b in self.0.iter().take(MAX_FIELD) {
            write_byte(f, b)?;
        }
        if cut {
            f.write_str("...")?;
        }
        f.write_char('"')
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

/// Anything displayable that may carry peer data (an error naming a client's path), printed
/// like [`Quoted`].
pub struct Clean<T>(pub T);

impl<T: Display> Display for Clean<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        Quoted(text.as_bytes()).fmt(f)
    }
}

impl<T: Display> fmt::Debug for Clean<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(self, f)
    }
}

/// Appends `value` quoted and escaped (for records built as bytes).
pub fn push_quoted(out: &mut Vec<u8>, value: &[u8]) {
    // Writing into a String cannot fail; the result is ASCII.
    let mut text = String::with_capacity(value.len().min(MAX_FIELD) + 8);
    let _ = write!(text, "{}", Quoted(value));
    out.extend_from_slice(text.as_bytes());
}

fn write_byte(f: &mut impl fmt::Write, b: u8) -> fmt::Result {
    match b {
        b'"' | b'\\' => {
            f.write_char('\\')?;
            f.write_char(char::from(b))
        }
        0x20..=0x7e => f.write_char(char::from(b)),
        _ => write!(f, "\\x{b:02x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_quotes_are_escaped() {
        let forged = b"ls\n2026-01-01T00:00:00Z  INFO forged\x1b[2J\r\"x\\\x7f\xc3\xa9\xe2\x80\xae";
        let text = Quoted(forged).to_string();
        assert_eq!(
            text,
            "\"ls\\x0a2026-01-01T00:00:00Z  INFO forged\\x1b[2J\\x0d\\\"x\\\\\\x7f\\xc3\\xa9\\xe2\\x80\\xae\""
        );
        assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert_eq!(Quoted::str("plain name").to_string(), "\"plain name\"");
        assert_eq!(Quoted(b"").to_string(), "\"\"");
    }

    #[test]
    fn long_values_are_cut() {
        let long = vec![b'a'; MAX_FIELD + 1];
        let text = Quoted(&long).to_string();
        assert_eq!(text.len(), MAX_FIELD + 5);
        assert!(text.ends_with("a...\""));
        let exact = vec![b'b'; MAX_FIELD];
        assert!(!Quoted(&exact).to_string().contains("..."));
    }

    #[test]
    fn displayable_values_are_cleaned() {
        let err = std::io::Error::other("open /tmp/a\nFAKE: x");
        assert_eq!(Clean(&err).to_string(), "\"open /tmp/a\\x0aFAKE: x\"");
        let mut out = b"path=".to_vec();
        push_quoted(&mut out, b"/tmp/\x1b");
        assert_eq!(out, b"path=\"/tmp/\\x1b\"");
    }
}
