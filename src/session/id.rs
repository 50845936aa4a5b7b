//! Session ids: 192 bits from the operating system's CSPRNG, written as 32 characters of
//! URL-safe base64 — or, for a store in Catalyst mode, 160 bits written as 40 lowercase hex
//! digits, the shape of Catalyst's ids. A [`SessionId`] can only hold a well-formed id of
//! one of these shapes ([`IdFormat`]).

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
/// Random bytes in a Catalyst-shaped id: 160 bits, as many as the SHA-1 digest Catalyst
/// makes its ids from.
pub const CATALYST_ID_BYTES: usize = 20;
/// Characters in a Catalyst-shaped id: two lowercase hex digits per byte.
pub const CATALYST_ID_LEN: usize = CATALYST_ID_BYTES * 2;
/// Room for the longest id text.
const MAX_ID_LEN: usize = if ID_LEN > CATALYST_ID_LEN {
    ID_LEN
} else {
    CATALYST_ID_LEN
};
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The shape of a store's session ids. A store accepts ids of its own shape only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdFormat {
    /// [`ID_LEN`] characters of URL-safe base64 (`A–Z a–z 0–9 - _`), [`ID_BYTES`] random
    /// bytes: the default.
    #[default]
    Native,
    /// [`CATALYST_ID_LEN`] lowercase hex digits, [`CATALYST_ID_BYTES`] random bytes: the ids
    /// Catalyst::Plugin::Session makes (a SHA-1 hex digest), for a store in Catalyst mode.
    Catalyst,
}

impl IdFormat {
    /// A new id of this shape, from the operating system's random number generator.
    ///
    /// # Errors
    /// [`Error::Random`] if the operating system cannot supply random bytes.
    pub fn generate(self) -> Result<SessionId> {
        match self {
            IdFormat::Native => SessionId::generate(),
            IdFormat::Catalyst => {
                let mut raw = [0u8; CATALYST_ID_BYTES];
                getrandom::fill(&mut raw).map_err(Error::Random)?;
                let mut text = [0u8; MAX_ID_LEN];
                for (pair, byte) in text.chunks_exact_mut(2).zip(raw) {
                    pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
                    pair[1] = HEX_DIGITS[usize::from(byte & 0x0f)];
                }
                Ok(SessionId {
                    text,
                    len: CATALYST_ID_LEN as u8,
                })
            }
        }
    }

    /// Parses an id sent by a client, strictly, as an id of this shape only.
    ///
    /// # Errors
    /// [`InvalidId`], saying what is wrong without repeating the input.
    pub fn parse(self, s: &str) -> Result<SessionId, InvalidId> {
        match self {
            IdFormat::Native => SessionId::parse(s),
            IdFormat::Catalyst => SessionId::parse_catalyst(s),
        }
    }

    /// The number of characters in an id of this shape.
    pub fn id_len(self) -> usize {
        match self {
            IdFormat::Native => ID_LEN,
            IdFormat::Catalyst => CATALYST_ID_LEN,
        }
    }
}

/// A well-formed session id: exactly [`ID_LEN`] characters of `A–Z a–z 0–9 - _`, or (in
/// Catalyst mode, [`IdFormat::Catalyst`]) exactly [`CATALYST_ID_LEN`] of `0–9 a–f`.
///
/// New ids come from [`SessionId::generate`] (or [`IdFormat::generate`]); ids from a client
/// go through [`SessionId::parse`] (or [`IdFormat::parse`]), which accept nothing else. The
/// text is safe to put in a URL path, a query, a cookie or an HTML attribute as it is.
///
/// `Display` writes the id; `Debug` shows only its first four characters, so that logging a
/// session by accident does not leak the credential.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    /// The id's text, then zeros.
    text: [u8; MAX_ID_LEN],
    /// Bytes of text: [`ID_LEN`] or [`CATALYST_ID_LEN`].
    len: u8,
}

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
    /// A Catalyst-shaped id ([`IdFormat::Catalyst`]) of the wrong length (in bytes).
    #[error("Catalyst session id of {found} bytes, expected {CATALYST_ID_LEN}")]
    HexLength {
        /// Its length.
        found: usize,
    },
    /// A byte that is not a lowercase hex digit in a Catalyst-shaped id.
    #[error("Catalyst session id has a character outside 0-9 a-f at byte {position}")]
    HexCharacter {
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
        let mut text = [0u8; MAX_ID_LEN];
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text[..ID_LEN])
            .expect("24 bytes encode to exactly 32 characters");
        debug_assert_eq!(written, ID_LEN);
        Ok(SessionId {
            text,
            len: ID_LEN as u8,
        })
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
        if bytes.len() != ID_LEN {
            return Err(InvalidId::Length { found: bytes.len() });
        }
        let mut text = [0u8; MAX_ID_LEN];
        text[..ID_LEN].copy_from_slice(bytes);
        Ok(SessionId {
            text,
            len: ID_LEN as u8,
        })
    }

    /// Parses a Catalyst-shaped id sent by a client: exactly [`CATALYST_ID_LEN`] lowercase
    /// hex digits, nothing around them. (Catalyst itself accepts hex of any length and
    /// case, but only ever makes 40 lowercase digits; an id in another case would name
    /// another cache key.)
    ///
    /// # Errors
    /// [`InvalidId`], saying what is wrong without repeating the input.
    pub fn parse_catalyst(s: &str) -> Result<SessionId, InvalidId> {
        let bytes = s.as_bytes();
        if bytes.is_empty() {
            return Err(InvalidId::Empty);
        }
        let is_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if let Some(position) = bytes.iter().take(CATALYST_ID_LEN).position(|b| !is_hex(b)) {
            return Err(InvalidId::HexCharacter { position });
        }
        if bytes.len() != CATALYST_ID_LEN {
            return Err(InvalidId::HexLength { found: bytes.len() });
        }
        let mut text = [0u8; MAX_ID_LEN];
        text[..CATALYST_ID_LEN].copy_from_slice(bytes);
        Ok(SessionId {
            text,
            len: CATALYST_ID_LEN as u8,
        })
    }

    /// The shape of this id.
    pub fn format(&self) -> IdFormat {
        if usize::from(self.len) == CATALYST_ID_LEN {
            IdFormat::Catalyst
        } else {
            IdFormat::Native
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        let text = self.text.get(..usize::from(self.len)).unwrap_or_default();
        // Only the id alphabets (ASCII) are ever stored.
        std::str::from_utf8(text).expect("session ids are ASCII")
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
            let seen: HashSet<u8> = ids.iter().map(|id| id.text[pos]).collect();
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
    fn catalyst_ids_are_40_lowercase_hex_digits_and_distinct() {
        let ids: HashSet<SessionId> = (0..1000)
            .map(|_| IdFormat::Catalyst.generate().unwrap())
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.as_str().len(), CATALYST_ID_LEN);
            assert_eq!(id.format(), IdFormat::Catalyst);
            assert!(id.as_str().bytes().all(|b| HEX_DIGITS.contains(&b)));
            assert_eq!(IdFormat::Catalyst.parse(id.as_str()), Ok(*id));
            // Each shape is parsed by its own format only.
            assert!(SessionId::parse(id.as_str()).is_err());
        }
        const { assert!(CATALYST_ID_BYTES * 8 >= 128) };
        assert_eq!(IdFormat::Catalyst.id_len(), 40);
        assert_eq!(IdFormat::Native.id_len(), ID_LEN);
        let native = SessionId::generate().unwrap();
        assert!(IdFormat::Catalyst.parse(native.as_str()).is_err());
        assert_eq!(native.format(), IdFormat::Native);
    }

    #[test]
    fn catalyst_parsing_is_strict() {
        // An id as Catalyst (Digest SHA-1 hexdigest) writes it.
        let good = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(SessionId::parse_catalyst(good).unwrap().as_str(), good);
        assert_eq!(SessionId::parse_catalyst(""), Err(InvalidId::Empty));
        assert_eq!(
            SessionId::parse_catalyst(&good[1..]),
            Err(InvalidId::HexLength { found: 39 })
        );
        assert_eq!(
            SessionId::parse_catalyst(&format!("{good}0")),
            Err(InvalidId::HexLength { found: 41 })
        );
        // Upper case would name another cache key; MD5-length ids are not Catalyst's.
        assert_eq!(
            SessionId::parse_catalyst(&good.to_uppercase()),
            Err(InvalidId::HexCharacter { position: 10 })
        );
        assert_eq!(
            SessionId::parse_catalyst(&good[..32]),
            Err(InvalidId::HexLength { found: 32 })
        );
        for (bad, position) in [
            (format!(" {}", &good[1..]), 0),
            (format!("{}g", &good[1..]), 39),
        ] {
            assert_eq!(
                SessionId::parse_catalyst(&bad),
                Err(InvalidId::HexCharacter { position }),
                "{bad:?}"
            );
        }
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
