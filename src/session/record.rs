//! The session record as stored in the cache: a fixed binary header, then the data and flash
//! maps as JSON, then the client binding.
//!
//! The header holds everything the load path decides on (times, section lengths, binding
//! flags), so a load reads it under the page lock without parsing any JSON. The version
//! field lets a later format be recognised: a record of another version is reported, never
//! overwritten. Integers are little-endian, so a record means the same on every machine.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::session::error::{Error, Result};

// Record layout (all integers little-endian):
//
// | offset | size | field                                                          |
// |-------:|-----:|----------------------------------------------------------------|
// |      0 |    4 | magic `b"FMSR"`                                                |
// |      4 |    2 | version (`RECORD_VERSION`)                                     |
// |      6 |    2 | flags: `FLAG_BOUND_ADDRESS`, `FLAG_BOUND_USER_AGENT`           |
// |      8 |    8 | created: Unix seconds                                          |
// |     16 |    8 | updated: when the data was last written                        |
// |     24 |    8 | active: when the idle deadline was last moved                  |
// |     32 |    8 | expires: when the session ends (never 0)                       |
// |        |      | (every time is at most `MAX_TIME`)                             |
// |     40 |    4 | data_len: bytes of the data section                            |
// |     44 |    4 | flash_len: bytes of the flash section                          |
// |     48 |    2 | address_len: bytes of the bound client address                 |
// |     50 |    2 | user_agent_len: bytes of the bound user agent                  |
// |     52 |      | data (JSON object, or empty for no keys), flash (likewise),    |
// |        |      | address (UTF-8), user agent (UTF-8); nothing after them        |

/// Identifies a session record.
pub(crate) const MAGIC: [u8; 4] = *b"FMSR";
/// The record format this crate reads and writes.
pub const RECORD_VERSION: u16 = 1;

const MAGIC_OFFSET: usize = 0;
const MAGIC_SIZE: usize = 4;
const VERSION_OFFSET: usize = MAGIC_OFFSET + MAGIC_SIZE;
const VERSION_SIZE: usize = 2;
const FLAGS_OFFSET: usize = VERSION_OFFSET + VERSION_SIZE;
const FLAGS_SIZE: usize = 2;
const TIME_SIZE: usize = 8;
const CREATED_OFFSET: usize = FLAGS_OFFSET + FLAGS_SIZE;
const UPDATED_OFFSET: usize = CREATED_OFFSET + TIME_SIZE;
const ACTIVE_OFFSET: usize = UPDATED_OFFSET + TIME_SIZE;
const EXPIRES_OFFSET: usize = ACTIVE_OFFSET + TIME_SIZE;
const SECTION_LEN_SIZE: usize = 4;
const DATA_LEN_OFFSET: usize = EXPIRES_OFFSET + TIME_SIZE;
const FLASH_LEN_OFFSET: usize = DATA_LEN_OFFSET + SECTION_LEN_SIZE;
const BINDING_LEN_SIZE: usize = 2;
const ADDRESS_LEN_OFFSET: usize = FLASH_LEN_OFFSET + SECTION_LEN_SIZE;
const USER_AGENT_LEN_OFFSET: usize = ADDRESS_LEN_OFFSET + BINDING_LEN_SIZE;
/// Bytes before the first section.
pub(crate) const HEADER_SIZE: usize = USER_AGENT_LEN_OFFSET + BINDING_LEN_SIZE;

/// The last second a record's times may name: the last second a cache entry can expire at
/// (expiry times in the file are `u32`, early in 2106). A record with a later time was not
/// written by this crate; keeping every time at or below it also keeps the arithmetic on
/// them (adding a lifetime, making a `SystemTime`) far from overflow.
pub(crate) const MAX_TIME: u64 = u32::MAX as u64;
const TIME_PAST_MAX: &str = "a time is past 2106 (the last second a cache entry can expire)";

/// The session is bound to the client address in the address section.
const FLAG_BOUND_ADDRESS: u16 = 0x0001;
/// The session is bound to the user agent in the user-agent section.
const FLAG_BOUND_USER_AGENT: u16 = 0x0002;
const KNOWN_FLAGS: u16 = FLAG_BOUND_ADDRESS | FLAG_BOUND_USER_AGENT;

/// The longest user agent (in bytes) a session is bound to; a longer one is cut at a
/// character boundary before it is stored or compared.
pub const MAX_BOUND_USER_AGENT: usize = 1024;

/// A session's data or flash values, by key.
pub(crate) type Map = BTreeMap<String, Value>;

/// The times of a record, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Times {
    pub(crate) created: u64,
    pub(crate) updated: u64,
    pub(crate) active: u64,
    pub(crate) expires: u64,
}

/// What a session is bound to (each `None` when not bound).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) address: Option<String>,
    pub(crate) user_agent: Option<String>,
}

/// The fixed-size header of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) times: Times,
    flags: u16,
    data_len: u32,
    flash_len: u32,
    address_len: u16,
    user_agent_len: u16,
}

/// A record's header and its sections, borrowed from the stored bytes. Sections are only
/// checked for length and UTF-8 here; the JSON is parsed by [`Record::decode`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordView<'a> {
    pub(crate) header: Header,
    data: &'a [u8],
    flash: &'a [u8],
    pub(crate) address: Option<&'a str>,
    pub(crate) user_agent: Option<&'a str>,
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub(crate) times: Times,
    pub(crate) data: Map,
    pub(crate) flash: Map,
    pub(crate) binding: Binding,
}

fn bad(reason: &'static str) -> Error {
    Error::BadRecord {
        reason,
        source: None,
    }
}

/// The `N` bytes at `offset`, or zeros past the end (callers check the length first; this
/// keeps a mistake there from becoming a panic).
fn bytes_at<const N: usize>(b: &[u8], offset: usize) -> [u8; N] {
    offset
        .checked_add(N)
        .and_then(|end| b.get(offset..end))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}

fn u16_at(b: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes_at(b, offset))
}

fn u32_at(b: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes_at(b, offset))
}

fn u64_at(b: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes_at(b, offset))
}

/// Splits `len` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], len: usize, what: &'static str) -> Result<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(len).ok_or_else(|| bad(what))?;
    *rest = tail;
    Ok(head)
}

/// `s` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Times {
    /// The times of a record created at `created` and written (so also active) at `now`.
    pub(crate) fn written(created: u64, now: u64, expires: u64) -> Times {
        Times {
            created,
            updated: now,
            active: now,
            expires,
        }
    }

    /// Whether every time is at most [`MAX_TIME`].
    pub(crate) fn in_range(&self) -> bool {
        [self.created, self.updated, self.active, self.expires]
            .iter()
            .all(|&t| t <= MAX_TIME)
    }
}

impl Header {
    /// Parses and checks the header at the start of `bytes`.
    fn parse(bytes: &[u8]) -> Result<Header> {
        if bytes.get(MAGIC_OFFSET..MAGIC_OFFSET + MAGIC_SIZE) != Some(&MAGIC[..]) {
            return Err(bad("not a session record (wrong magic)"));
        }
        if bytes.len() < VERSION_OFFSET + VERSION_SIZE {
            return Err(bad("truncated header"));
        }
        let version = u16_at(bytes, VERSION_OFFSET);
        if version != RECORD_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: RECORD_VERSION,
            });
        }
        if bytes.len() < HEADER_SIZE {
            return Err(bad("truncated header"));
        }
        let flags = u16_at(bytes, FLAGS_OFFSET);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(bad("unknown flag bits"));
        }
        let header = Header {
            times: Times {
                created: u64_at(bytes, CREATED_OFFSET),
                updated: u64_at(bytes, UPDATED_OFFSET),
                active: u64_at(bytes, ACTIVE_OFFSET),
                expires: u64_at(bytes, EXPIRES_OFFSET),
            },
            flags,
            data_len: u32_at(bytes, DATA_LEN_OFFSET),
            flash_len: u32_at(bytes, FLASH_LEN_OFFSET),
            address_len: u16_at(bytes, ADDRESS_LEN_OFFSET),
            user_agent_len: u16_at(bytes, USER_AGENT_LEN_OFFSET),
        };
        if header.times.expires == 0 {
            return Err(bad("no expiry time"));
        }
        if !header.times.in_range() {
            return Err(bad(TIME_PAST_MAX));
        }
        if flags & FLAG_BOUND_ADDRESS == 0 && header.address_len != 0
            || flags & FLAG_BOUND_USER_AGENT == 0 && header.user_agent_len != 0
        {
            return Err(bad("binding section without its flag"));
        }
        Ok(header)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&RECORD_VERSION.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.times.created.to_le_bytes());
        out.extend_from_slice(&self.times.updated.to_le_bytes());
        out.extend_from_slice(&self.times.active.to_le_bytes());
        out.extend_from_slice(&self.times.expires.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.flash_len.to_le_bytes());
        out.extend_from_slice(&self.address_len.to_le_bytes());
        out.extend_from_slice(&self.user_agent_len.to_le_bytes());
    }

    /// Whether the record holds flash values waiting for the next load.
    pub(crate) fn has_flash(&self) -> bool {
        self.flash_len != 0
    }
}

impl<'a> RecordView<'a> {
    /// Checks the header and the section lengths of a stored record.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<RecordView<'a>> {
        let header = Header::parse(bytes)?;
        let mut rest = bytes.get(HEADER_SIZE..).unwrap_or_default();
        let len = |n: u32, what| usize::try_from(n).map_err(|_| bad(what));
        let data = take(
            &mut rest,
            len(header.data_len, "data section cut short")?,
            "data section cut short",
        )?;
        let flash = take(
            &mut rest,
            len(header.flash_len, "flash section cut short")?,
            "flash section cut short",
        )?;
        let address = take(
            &mut rest,
            usize::from(header.address_len),
            "address section cut short",
        )?;
        let user_agent = take(
            &mut rest,
            usize::from(header.user_agent_len),
            "user agent section cut short",
        )?;
        if !rest.is_empty() {
            return Err(bad("bytes after the last section"));
        }
        let text = |b: &'a [u8]| std::str::from_utf8(b).map_err(|_| bad("binding is not UTF-8"));
        Ok(RecordView {
            header,
            data,
            flash,
            address: (header.flags & FLAG_BOUND_ADDRESS != 0)
                .then(|| text(address))
                .transpose()?,
            user_agent: (header.flags & FLAG_BOUND_USER_AGENT != 0)
                .then(|| text(user_agent))
                .transpose()?,
        })
    }

    /// The same record with new `active` and `expires` times and, if `drop_flash`, without its
    /// flash section. The data and binding bytes are copied as they are.
    pub(crate) fn patched(&self, active: u64, expires: u64, drop_flash: bool) -> Vec<u8> {
        let mut header = self.header;
        header.times.active = active;
        header.times.expires = expires;
        if drop_flash {
            header.flash_len = 0;
        }
        let flash: &[u8] = if drop_flash { &[] } else { self.flash };
        let mut out = Vec::with_capacity(
            HEADER_SIZE
                + self.data.len()
                + flash.len()
                + self.address.map_or(0, str::len)
                + self.user_agent.map_or(0, str::len),
        );
        header.write(&mut out);
        out.extend_from_slice(self.data);
        out.extend_from_slice(flash);
        out.extend_from_slice(self.address.unwrap_or("").as_bytes());
        out.extend_from_slice(self.user_agent.unwrap_or("").as_bytes());
        out
    }

    /// Parses the flash section alone.
    pub(crate) fn flash(&self) -> Result<Map> {
        parse_map(self.flash, "flash section is not a JSON object")
    }

    /// Parses the JSON sections.
    pub(crate) fn decode(&self) -> Result<Record> {
        Ok(Record {
            times: self.header.times,
            data: parse_map(self.data, "data section is not a JSON object")?,
            flash: parse_map(self.flash, "flash section is not a JSON object")?,
            binding: Binding {
                address: self.address.map(str::to_owned),
                user_agent: self.user_agent.map(str::to_owned),
            },
        })
    }
}

fn parse_map(bytes: &[u8], reason: &'static str) -> Result<Map> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_slice(bytes).map_err(|_| bad(reason))
}

fn map_bytes(map: &Map) -> Vec<u8> {
    if map.is_empty() {
        return Vec::new();
    }
    // Serialising string-keyed JSON values into a Vec cannot fail.
    serde_json::to_vec(map).expect("a map of JSON values serialises")
}

impl Record {
    /// Decodes a stored record.
    ///
    /// # Errors
    /// [`Error::BadRecord`] or [`Error::UnsupportedVersion`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
        RecordView::parse(bytes)?.decode()
    }

    /// Encodes the record.
    ///
    /// # Errors
    /// [`Error::BadRecord`] if a section is longer than its length field can say (a data map
    /// over 4 GiB, or a binding over 64 KiB; the store cuts bindings far shorter), or a time
    /// is past [`MAX_TIME`] (the store clamps them), so that nothing unreadable is written.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        if !self.times.in_range() {
            return Err(bad(TIME_PAST_MAX));
        }
        let data = map_bytes(&self.data);
        let flash = map_bytes(&self.flash);
        let address = self.binding.address.as_deref();
        let user_agent = self.binding.user_agent.as_deref();
        let too_long = |_| bad("section too long for its length field");
        let mut flags = 0;
        if address.is_some() {
            flags |= FLAG_BOUND_ADDRESS;
        }
        if user_agent.is_some() {
            flags |= FLAG_BOUND_USER_AGENT;
        }
        let header = Header {
            times: self.times,
            flags,
            data_len: u32::try_from(data.len()).map_err(too_long)?,
            flash_len: u32::try_from(flash.len()).map_err(too_long)?,
            address_len: u16::try_from(address.map_or(0, str::len)).map_err(too_long)?,
            user_agent_len: u16::try_from(user_agent.map_or(0, str::len)).map_err(too_long)?,
        };
        let mut out = Vec::with_capacity(
            HEADER_SIZE
                + data.len()
                + flash.len()
                + usize::from(header.address_len)
                + usize::from(header.user_agent_len),
        );
        header.write(&mut out);
        out.extend_from_slice(&data);
        out.extend_from_slice(&flash);
        out.extend_from_slice(address.unwrap_or("").as_bytes());
        out.extend_from_slice(user_agent.unwrap_or("").as_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> Record {
        let mut data = Map::new();
        data.insert("user".into(), json!("ada"));
        data.insert("cart".into(), json!([1, 2, 3]));
        let mut flash = Map::new();
        flash.insert("notice".into(), json!("saved"));
        Record {
            times: Times {
                created: 1_700_000_000,
                updated: 1_700_000_010,
                active: 1_700_000_005,
                expires: 1_700_086_400,
            },
            data,
            flash,
            binding: Binding {
                address: Some("192.0.2.7".into()),
                user_agent: Some("Mozilla/5.0 (X11)".into()),
            },
        }
    }

    #[test]
    fn layout_constants_follow_the_table() {
        assert_eq!(CREATED_OFFSET, 8);
        assert_eq!(EXPIRES_OFFSET, 32);
        assert_eq!(DATA_LEN_OFFSET, 40);
        assert_eq!(USER_AGENT_LEN_OFFSET, 50);
        assert_eq!(HEADER_SIZE, 52);
        let empty = Record {
            data: Map::new(),
            flash: Map::new(),
            binding: Binding::default(),
            ..sample()
        };
        assert_eq!(empty.encode().unwrap().len(), HEADER_SIZE);
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = r.encode().unwrap();
        assert_eq!(&bytes[..4], b"FMSR");
        assert_eq!(u16_at(&bytes, VERSION_OFFSET), RECORD_VERSION);
        assert_eq!(Record::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn other_versions_are_recognised() {
        let mut bytes = sample().encode().unwrap();
        bytes[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&2u16.to_le_bytes());
        match Record::decode(&bytes) {
            Err(Error::UnsupportedVersion {
                found: 2,
                supported: 1,
            }) => {}
            other => panic!("{other:?}"),
        }
        // A future record may be shorter than a v1 header: still recognised as a version.
        let short = [&MAGIC[..], &7u16.to_le_bytes()].concat();
        assert!(matches!(
            Record::decode(&short),
            Err(Error::UnsupportedVersion { found: 7, .. })
        ));
    }

    #[test]
    fn damage_is_reported() {
        let good = sample().encode().unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "magic"),
            (Vec::new(), "magic"),
            (good[..HEADER_SIZE - 1].to_vec(), "truncated"),
            (good[..good.len() - 1].to_vec(), "cut short"),
            ([&good[..], b"x"].concat(), "after the last"),
            (
                {
                    let mut b = good.clone();
                    b[FLAGS_OFFSET] |= 0x80;
                    b
                },
                "flag",
            ),
            (
                {
                    let mut b = good.clone();
                    b[EXPIRES_OFFSET..EXPIRES_OFFSET + 8].fill(0);
                    b
                },
                "expiry",
            ),
            (
                {
                    let mut b = good.clone();
                    b[HEADER_SIZE] = b'[';
                    b
                },
                "JSON object",
            ),
            (
                {
                    let mut b = good.clone();
                    b[DATA_LEN_OFFSET..DATA_LEN_OFFSET + 4].fill(0xff);
                    b
                },
                "cut short",
            ),
        ];
        for (bytes, want) in cases {
            match Record::decode(&bytes) {
                Err(Error::BadRecord { reason, .. }) => {
                    assert!(reason.contains(want), "{reason:?} should mention {want:?}")
                }
                other => panic!("expected BadRecord({want}), got {other:?}"),
            }
        }
    }

    #[test]
    fn patch_moves_times_and_drops_flash_only() {
        let r = sample();
        let bytes = r.encode().unwrap();
        let view = RecordView::parse(&bytes).unwrap();
        assert!(view.header.has_flash());
        let patched = view.patched(1_700_000_100, 1_700_000_200, true);
        let back = Record::decode(&patched).unwrap();
        assert_eq!(back.times.active, 1_700_000_100);
        assert_eq!(back.times.expires, 1_700_000_200);
        assert_eq!(back.times.created, r.times.created);
        assert_eq!(back.data, r.data);
        assert!(back.flash.is_empty());
        assert_eq!(back.binding, r.binding);
        let kept = view.patched(1, 2, false);
        assert_eq!(Record::decode(&kept).unwrap().flash, r.flash);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_at_char("abc", 5), "abc");
        assert_eq!(truncate_at_char("aé", 2), "a");
        assert_eq!(truncate_at_char("aéb", 3), "aé");
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            times in (0..=MAX_TIME, 0..=MAX_TIME, 0..=MAX_TIME, 1..=MAX_TIME),
            data in prop::collection::btree_map(".{0,10}", json_value(), 0..6),
            flash in prop::collection::btree_map(".{0,10}", json_value(), 0..3),
            address in proptest::option::of("[0-9a-f:.]{0,39}"),
            user_agent in proptest::option::of(".{0,60}"),
        ) {
            let r = Record {
                times: Times { created: times.0, updated: times.1, active: times.2, expires: times.3 },
                data,
                flash,
                binding: Binding { address, user_agent },
            };
            let bytes = r.encode().unwrap();
            prop_assert_eq!(Record::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn times_past_2106_are_refused(
            field in 0..4usize,
            junk in MAX_TIME + 1..=u64::MAX,
        ) {
            let mut r = sample();
            let t = &mut r.times;
            *[&mut t.created, &mut t.updated, &mut t.active, &mut t.expires][field] = junk;
            let refused = matches!(r.encode(), Err(Error::BadRecord { .. }));
            prop_assert!(refused, "encoded a time past 2106");
            let mut bytes = sample().encode().unwrap();
            let offset = CREATED_OFFSET + field * TIME_SIZE;
            bytes[offset..offset + TIME_SIZE].copy_from_slice(&junk.to_le_bytes());
            match Record::decode(&bytes) {
                Err(Error::BadRecord { reason, .. }) => prop_assert!(reason.contains("2106")),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
            let mut with_header = sample().encode().unwrap();
            with_header.truncate(HEADER_SIZE);
            with_header.extend_from_slice(&bytes);
            let _ = Record::decode(&with_header);
        }
    }
}
