//! Keys as one line of text, and back: the form `keys` prints and `--escaped` reads.
//!
//! Printable ASCII and printable UTF-8 characters stand for themselves; a backslash is `\\`;
//! every other byte — control characters, whitespace other than the space, invisible format
//! characters (bidirectional overrides and isolates, zero-width characters, the byte order
//! mark, the soft hyphen), bytes that are not valid UTF-8 — is `\xNN` (lower-case hex).
//! Escaping never produces a line break, and unescaping gives back the exact bytes. So a key
//! never shows as another (`evil\u{202e}gnp.exe` would read `evilexe.png`).

use std::fmt::Write as _;

/// `bytes` in the escaped form.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() || (c.is_whitespace() && c != ' ') || invisible(c) {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    push_hex(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            push_hex(&mut out, b);
        }
    }
    out
}

/// A format character that changes how the text around it shows, or shows as nothing.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

fn push_hex(out: &mut String, b: u8) {
    let _ = write!(out, "\\x{b:02x}");
}

/// The bytes an escaped text stands for: `\\` is a backslash, `\xNN` the byte NN (either
/// case); every other byte stands for itself.
///
/// # Errors
/// A backslash followed by anything else, with a one-line reason.
pub(crate) fn unescape(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match rest {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'x', hi, lo, tail @ ..] => match (hex_digit(*hi), hex_digit(*lo)) {
                (Some(hi), Some(lo)) => {
                    out.push((hi << 4) | lo);
                    rest = tail;
                }
                _ => return Err(bad_escape(text, rest)),
            },
            _ => return Err(bad_escape(text, rest)),
        }
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The reason for a bad escape; `rest` is what follows its backslash.
fn bad_escape(text: &[u8], rest: &[u8]) -> String {
    let at = text.len() - rest.len() - 1;
    format!(
        "bad escape at byte {at} of {:?}: only \\\\ and \\xNN are escapes",
        String::from_utf8_lossy(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_stands_for_itself() {
        assert_eq!(escape(b"user:42 x"), "user:42 x");
        assert_eq!(escape("ключ→😀".as_bytes()), "ключ→😀");
    }

    #[test]
    fn backslash_controls_and_bad_utf8_are_escaped() {
        assert_eq!(escape(b"a\\b"), "a\\\\b");
        assert_eq!(escape(b"\0\n\t\x7f"), "\\x00\\x0a\\x09\\x7f");
        assert_eq!(escape(b"\xff\xc3"), "\\xff\\xc3");
        // U+0085 (a C1 control) and U+2028 (line separator) as their UTF-8 bytes.
        assert_eq!(
            escape("\u{85}\u{2028}".as_bytes()),
            "\\xc2\\x85\\xe2\\x80\\xa8"
        );
    }

    #[test]
    fn invisible_format_characters_are_escaped() {
        // A right-to-left override would show `evil\u{202e}gnp.exe` as `evilexe.png`.
        assert_eq!(
            escape("evil\u{202e}gnp.exe".as_bytes()),
            "evil\\xe2\\x80\\xaegnp.exe"
        );
        for c in ['\u{200b}', '\u{2066}', '\u{feff}', '\u{ad}', '\u{61c}'] {
            let text = escape(c.to_string().as_bytes());
            assert!(text.starts_with("\\x"), "{c:?}: {text}");
            assert_eq!(unescape(text.as_bytes()), Ok(c.to_string().into_bytes()));
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let text = escape(&all);
        assert!(!text.contains('\n'));
        assert_eq!(unescape(text.as_bytes()), Ok(all));
        let mixed = "k\\ey\u{85}→\n".as_bytes();
        assert_eq!(unescape(escape(mixed).as_bytes()).as_deref(), Ok(mixed));
    }

    #[test]
    fn unescape_accepts_upper_case_and_rejects_other_escapes() {
        assert_eq!(unescape(b"\\xFF\\x0a"), Ok(vec![0xff, b'\n']));
        assert!(unescape(b"\\n").is_err());
        assert!(unescape(b"\\x4").is_err());
        assert!(unescape(b"\\xg0").is_err());
        assert!(unescape(b"trailing\\").is_err());
    }
}
