//! Session ids: 192 bits from the operating system's CSPRNG, written as 32 characters of
//! URL-safe base64. A [`SessionId`] can only hold a well-formed id.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::session::error::{Error, Result};

/// Random bytes in an id: 192 bits, well above the 128 the id must carry at least.
pub const ID_BYTES: usize = 24;
/// Characters in an id's text: `ID_BYTES` in unpadded base64, 6 bits per character. 24 bytes
/// are exactly 32 characters, so every character carries 6 random bits and each id has one
/// spelling only.
pub const ID_LEN: usize = ID_BYTES / 3 * 4;

/// A well-formed session id: exactly [`ID_LEN`] characters of `A–Z a–z 0–9 - _`.
///
/// New ids come from [`SessionId::generate`]; ids from a client go through
/// [`SessionId::parse`], which accepts nothing else. The text is safe to put in a URL path, a
/// query, a cookie or an HTML attribute as it is.
///
/// `Display` writes the id; `Debug` shows only its first four characters, so that logging a
/// session by accident does not leak the credential.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; ID_LEN]);

/// Why a string is not a session id. Carries positions and lengths only, never the text,
/// so it can be logged or shown without echoing what a client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidId {
    /// The string is empty.
    #[error("empty session id")]
    Empty,
    /// The string has the wrong length (in bytes).
    #[error("session id of {found} bytes, expected {ID_LEN}")]
    Length {
        /// Its length.
        found: usize,
    },
    /// A byte outside the id alphabet (`A–Z a–z 0–9 - _`).
    #[error("session id has a character outside A-Z a-z 0-9 - _ at byte {position}")]
    Character {
        /// The byte offset of the first bad byte.
        position: usize,
    },
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl SessionId {
    /// A new id: [`ID_BYTES`] bytes from the operating system's random number generator.
    ///
    /// # Errors
    /// [`Error::Random`] if the operating system cannot supply random bytes.
    pub fn generate() -> Result<SessionId> {
        let mut raw = [0u8; ID_BYTES];
        getrandom::fill(&mut raw).map_err(Error::Random)?;
        let mut text = [0u8; ID_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .expect("24 bytes encode to exactly 32 characters");
        debug_assert_eq!(written, ID_LEN);
        Ok(SessionId(text))
    }

    /// Parses an id sent by a client. Strict: exactly [`ID_LEN`] bytes of the id alphabet,
    /// nothing around it (no whitespace, quotes, padding or percent-encoding).
    ///
    /// # Errors
    /// [`InvalidId`], saying what is wrong without repeating the input.
    pub fn parse(s: &str) -> Result<SessionId, InvalidId> {
        let bytes = s.as_bytes();
        if bytes.is_empty() {
            return Err(InvalidId::Empty);
        }
        if let Some(position) = bytes.iter().take(ID_LEN).position(|&b| !is_id_byte(b)) {
            return Err(InvalidId::Character { position });
        }
        let text: [u8; ID_LEN] = bytes
            .try_into()
            .map_err(|_| InvalidId::Length { found: bytes.len() })?;
        Ok(SessionId(text))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        // Only the id alphabet (ASCII) is ever stored.
        std::str::from_utf8(&self.0).expect("session ids are ASCII")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", &self.as_str()[..4])
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl FromStr for SessionId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<SessionId, InvalidId> {
        SessionId::parse(s)
    }
}

impl TryFrom<&str> for SessionId {
    type Error = InvalidId;

    fn try_from(s: &str) -> Result<SessionId, InvalidId> {
        SessionId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_are_well_formed_and_distinct() {
        let ids: HashSet<SessionId> = (0..1000).map(|_| SessionId::generate().unwrap()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.as_str().len(), ID_LEN);
            assert_eq!(SessionId::parse(id.as_str()), Ok(*id));
            let raw = URL_SAFE_NO_PAD.decode(id.as_str()).unwrap();
            assert_eq!(raw.len(), ID_BYTES);
        }
    }

    #[test]
    fn ids_carry_at_least_128_bits() {
        const { assert!(ID_BYTES * 8 >= 128) };
        assert_eq!(ID_LEN, 32);
    }

    #[test]
    fn every_character_position_varies() {
        // 200 ids: each position takes many values (a stuck position would show up here).
        let ids: Vec<SessionId> = (0..200).map(|_| SessionId::generate().unwrap()).collect();
        for pos in 0..ID_LEN {
            let seen: HashSet<u8> = ids.iter().map(|id| id.0[pos]).collect();
            assert!(
                seen.len() > 20,
                "position {pos}: only {} values",
                seen.len()
            );
        }
    }

    #[test]
    fn parsing_is_strict() {
        let good = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(SessionId::parse(good).is_ok());
        assert!(SessionId::parse("abcdefghijklmnopqrstuvwxyz-_0129").is_ok());
        assert_eq!(SessionId::parse(""), Err(InvalidId::Empty));
        assert_eq!(
            SessionId::parse(&good[1..]),
            Err(InvalidId::Length { found: 31 })
        );
        assert_eq!(
            SessionId::parse(&format!("{good}A")),
            Err(InvalidId::Length { found: 33 })
        );
        assert_eq!(
            SessionId::parse(&"A".repeat(100_000)),
            Err(InvalidId::Length { found: 100_000 })
        );
        for (bad, position) in [
            (format!(" {}", &good[1..]), 0),
            (format!("{}=", &good[1..]), 31),
            (format!("{}+", &good[1..]), 31),
            (format!("{}/", &good[1..]), 31),
            (format!("{}.", &good[1..]), 31),
            (format!("{}\0", &good[1..]), 31),
            (format!("%41{}", &good[3..]), 0),
            (format!("\"{}\"", &good[2..]), 0),
        ] {
            assert_eq!(
                SessionId::parse(&bad),
                Err(InvalidId::Character { position }),
                "{bad:?}"
            );
        }
        // Non-ASCII: a 32-byte string with a multibyte character.
        let s = format!("é{}", &good[2..]);
        assert_eq!(s.len(), 32);
        assert_eq!(
            SessionId::parse(&s),
            Err(InvalidId::Character { position: 0 })
        );
    }

    #[test]
    fn errors_do_not_echo_the_input() {
        let hostile = "<script>alert(1)</script>";
        let e = SessionId::parse(hostile).unwrap_err();
        assert!(!e.to_string().contains("script"), "{e}");
    }

    #[test]
    fn debug_is_redacted() {
        let id = SessionId::generate().unwrap();
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(id.as_str()), "{dbg}");
        assert!(dbg.contains(&id.as_str()[..4]));
        assert_eq!(id.to_string(), id.as_str());
    }
}
