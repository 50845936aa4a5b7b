//! One line of `dump` output: an entry as a JSON object, and back.
//!
//! ```text
//! {"key":"user:1","value":"Ada","expire_on":null,"last_access":1700000000,"flags":0}
//! {"key_base64":"AP8=","value_base64":"AAEC","expire_on":1700003600,"last_access":1700000000,"flags":0}
//! {"key":"k","value":"v","expire_on":null,"last_access":1700000000,"flags":134217728,"modseq":7}
//! ```
//!
//! Keys and values that are valid UTF-8 are JSON strings (`key`, `value`), any other bytes
//! standard padded base64 (`key_base64`, `value_base64`), so every entry round-trips exactly.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fastmmap::{Entry, EntryFlags};
use serde::{Deserialize, Serialize};

// Flag bits and entry sizes of the page format (docs/format.md), which the public API does not
// export: `load` checks records against them before it stores anything.

/// The value is Perl's undef: its value must be empty (`load` refuses one with bytes).
pub(crate) const FLAG_UNDEF: u32 = 0x2000_0000;
/// The entry is a tombstone (never dumped; refused by `load`).
pub(crate) const FLAG_TOMBSTONE: u32 = 0x1000_0000;
/// The value carries an 8-byte modseq prefix.
pub(crate) const FLAG_HAS_MODSEQ: u32 = 0x0800_0000;
/// Bytes of an entry's header in a page.
const ENTRY_HEADER_SIZE: usize = 24;
/// Bytes of the modseq prefix of a value stored with one.
const MODSEQ_SIZE: usize = 8;
/// Entries are padded to a multiple of this.
const ENTRY_ALIGN: usize = 4;

/// A `dump` line as it appears in JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    /// Unix seconds; `null` for never.
    #[serde(default)]
    expire_on: Option<u32>,
    /// Unix seconds; informative only (`load` cannot restore it).
    #[serde(default)]
    last_access: Option<u32>,
    #[serde(default)]
    flags: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modseq: Option<u64>,
}

/// A record checked and decoded, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    /// Unix seconds; `None` for never.
    pub(crate) expire_on: Option<u32>,
    /// Flag bits, without the tombstone and modseq bits.
    pub(crate) flags: u32,
    pub(crate) modseq: Option<u64>,
}

impl Record {
    /// The record of a live entry.
    pub(crate) fn of(key: &[u8], entry: &Entry) -> Record {
        let (key, key_base64) = text_or_base64(key);
        let (value, value_base64) = text_or_base64(&entry.value);
        Record {
            key,
            key_base64,
            value,
            value_base64,
            expire_on: entry.expires_at.map(file_secs),
            last_access: Some(file_secs(entry.last_access)),
            flags: entry.flags.0,
            modseq: entry.modseq,
        }
    }

    /// Checks and decodes the record.
    ///
    /// # Errors
    /// A one-line reason: a missing or doubled key or value, bad base64, or flag bits that
    /// cannot be stored (the tombstone bit; the modseq bit without a modseq; the undef bit
    /// with value bytes).
    pub(crate) fn into_item(self) -> Result<Item, String> {
        let key = bytes_of("key", self.key, self.key_base64)?;
        let value = bytes_of("value", self.value, self.value_base64)?;
        if self.flags & FLAG_TOMBSTONE != 0 {
            return Err(
                "flags has the tombstone bit (0x10000000): tombstones cannot be loaded".into(),
            );
        }
        if EntryFlags(self.flags).is_compressed() {
            // The value is compressed bytes, which a store would keep as the value itself (the
            // compression bits are the library's to set): the application would read them back
            // as its value. Refused rather than corrupted.
            return Err(format!(
                "flags {:#x} has a compression bit: the value is compressed bytes, which would                  be stored as the value itself; dump the file with a handle that decompresses",
                self.flags
            ));
        }
        if self.flags & FLAG_UNDEF != 0 && !value.is_empty() {
            return Err(format!(
                "flags has the undef bit (0x20000000) but the value is not empty ({} bytes): \
                 Perl would read undef and lose them",
                value.len()
            ));
        }
        let flags = self.flags & !FLAG_HAS_MODSEQ;
        match self.modseq {
            None if self.flags & FLAG_HAS_MODSEQ != 0 => {
                return Err("flags has the modseq bit (0x08000000) but there is no modseq".into());
            }
            Some(_) if flags != 0 => {
                return Err(format!(
                    "flags {flags:#x} cannot be stored together with a modseq (set_if_newer stores none)"
                ));
            }
            _ => {}
        }
        Ok(Item {
            key,
            value,
            expire_on: self.expire_on,
            flags,
            modseq: self.modseq,
        })
    }
}

impl Item {
    /// Bytes the entry occupies in a page (compare with `Cache::max_entry_size`).
    pub(crate) fn entry_size(&self) -> usize {
        let modseq = if self.modseq.is_some() {
            MODSEQ_SIZE
        } else {
            0
        };
        (ENTRY_HEADER_SIZE + self.key.len() + self.value.len() + modseq)
            .next_multiple_of(ENTRY_ALIGN)
    }
}

/// The largest value a page whose largest entry is `max_entry` bytes holds under a key of
/// `key_len` bytes (without a modseq); `None` if even the key does not fit.
pub(crate) fn max_value_size(max_entry: usize, key_len: usize) -> Option<usize> {
    (max_entry - max_entry % ENTRY_ALIGN).checked_sub(ENTRY_HEADER_SIZE + key_len)
}

/// Bytes of JSON a record may take per byte of key or value: `\u0000` for a control byte.
const JSON_BYTES_PER_BYTE: usize = 6;
/// Room for a record's field names, numbers and punctuation.
const JSON_RECORD_OVERHEAD: usize = 1024;

/// The longest `dump` line that can hold an entry of at most `max_entry` bytes: any longer
/// line is refused without being read whole.
pub(crate) fn max_line_size(max_entry: usize) -> usize {
    max_entry
        .saturating_mul(JSON_BYTES_PER_BYTE)
        .saturating_add(JSON_RECORD_OVERHEAD)
}

/// `(text, None)` for valid UTF-8, else `(None, base64)`.
fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

/// The bytes of field `name`, given as text or as `<name>_base64`: exactly one of them.
fn bytes_of(name: &str, text: Option<String>, base64: Option<String>) -> Result<Vec<u8>, String> {
    match (text, base64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b64)) => BASE64
            .decode(b64)
            .map_err(|e| format!("{name}_base64 is not valid base64: {e}")),
        (Some(_), Some(_)) => Err(format!("both {name} and {name}_base64 are given")),
        (None, None) => Err(format!("missing field `{name}` (or `{name}_base64`)")),
    }
}

/// `t` as whole Unix seconds, clamped to the `u32` range the file stores.
pub(crate) fn file_secs(t: SystemTime) -> u32 {
    u32::try_from(fastmmap::unix_secs(t)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Item, String> {
        serde_json::from_str::<Record>(line)
            .map_err(|e| e.to_string())?
            .into_item()
    }

    #[test]
    fn text_and_base64_fields() {
        let item = parse(r#"{"key":"k","value_base64":"AP8=","expire_on":5,"flags":2147483648}"#);
        assert_eq!(
            item,
            Ok(Item {
                key: b"k".to_vec(),
                value: vec![0, 0xff],
                expire_on: Some(5),
                flags: 0x8000_0000,
                modseq: None,
            })
        );
        let minimal = parse(r#"{"key_base64":"/w==","value":""}"#).unwrap();
        assert_eq!(
            (minimal.key, minimal.expire_on, minimal.flags),
            (vec![0xff], None, 0)
        );
    }

    #[test]
    fn serialized_form() {
        let rec = Record {
            key: Some("k".into()),
            value_base64: Some(BASE64.encode([0xff])),
            expire_on: None,
            last_access: Some(7),
            ..Record::default()
        };
        assert_eq!(
            serde_json::to_string(&rec).unwrap(),
            r#"{"key":"k","value_base64":"/w==","expire_on":null,"last_access":7,"flags":0}"#
        );
    }

    #[test]
    fn bad_records_say_why() {
        let err = |line: &str| parse(line).unwrap_err();
        assert!(err(r#"{"value":"v"}"#).contains("missing field `key`"));
        assert!(err(r#"{"key":"k","key_base64":"aw==","value":"v"}"#).contains("both key"));
        assert!(err(r#"{"key":"k","value_base64":"!!"}"#).contains("value_base64"));
        assert!(err(r#"{"key":"k","value":"v","colour":1}"#).contains("unknown field"));
        assert!(err(r#"{"key":"k","value":"v","expire_on":-1}"#).contains("expected u32"));
        assert!(err(r#"{"key":"k","value":"v","flags":268435456}"#).contains("tombstone"));
        assert!(err(r#"{"key":"k","value":"v","flags":134217728}"#).contains("no modseq"));
        assert!(err(r#"{"key":"k","value":"v","flags":1,"modseq":3}"#).contains("modseq"));
        assert!(err(r#"{"key":"k","value":"v","flags":536870912}"#).contains("undef bit"));
        let undef = parse(r#"{"key":"k","value":"","flags":536870912}"#).unwrap();
        assert_eq!((undef.value, undef.flags), (vec![], 0x2000_0000));
        // The modseq bit goes with a modseq, as `dump` writes it.
        let ok = parse(r#"{"key":"k","value":"v","flags":134217728,"modseq":3}"#).unwrap();
        assert_eq!((ok.flags, ok.modseq), (0, Some(3)));
    }

    #[test]
    fn entry_sizes_follow_the_page_format() {
        let item = |k: usize, v: usize, modseq| Item {
            key: vec![0; k],
            value: vec![0; v],
            expire_on: None,
            flags: 0,
            modseq,
        };
        assert_eq!(item(1, 1, None).entry_size(), 28);
        assert_eq!(item(4, 4, None).entry_size(), 32);
        assert_eq!(item(4, 4, Some(1)).entry_size(), 40);
        // The largest value for a key fills the page's largest entry, and one byte more
        // does not fit.
        for (max, key) in [(100, 3), (101, 3), (103, 0), (64, 40)] {
            let v = max_value_size(max, key).unwrap();
            assert!(item(key, v, None).entry_size() <= max);
            assert!(item(key, v + 1, None).entry_size() > max);
        }
        assert_eq!(max_value_size(100, 77), None);
    }
}
