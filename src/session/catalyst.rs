//! Catalyst mode (feature `perl`): the options of a store that keeps sessions as
//! Catalyst::Plugin::Session 0.43 with Store::FastMmap keeps them, and the mapping between
//! its Perl session hash and a [`Session`](crate::session::Session)'s parts.
//!
//! Store::FastMmap opens a Cache::FastMmap with its default serializer (Storable,
//! `freeze(\$value)`) and no expiry of its own, so every record is a Storable image and
//! never expires in the cache: the session's end is the number under `expires:SID`.
//!
//! | key | value (Storable) |
//! |---|---|
//! | `session:SID` | a hash: `__created`, `__updated` (Unix seconds), `__address` / `__user_agent` (with `verify_address` / `verify_user_agent`), `__flash` (a hash of flash values, while there are any), and the application's keys |
//! | `expires:SID` | a number: when the session ends (Unix seconds) |
//! | `flash:SID` | not written by 0.43 (it keeps flash values in `__flash`); deleted with the session, as Catalyst does |

use std::time::Duration;

use serde_json::Value;

use crate::perl::{PerlFormat, storable};
use crate::session::error::{Error, Result};
use crate::session::record::{Binding, MAX_TIME, Map};

/// Catalyst's default session lifetime without activity (its `expires`): two hours.
pub const CATALYST_DEFAULT_EXPIRES: Duration = Duration::from_secs(7200);
/// Cache::FastMmap's default number of pages, used by Store::FastMmap unless configured.
pub const CATALYST_DEFAULT_NUM_PAGES: u32 = 89;
/// Cache::FastMmap's default page size (64 KiB), used by Store::FastMmap unless configured.
pub const CATALYST_DEFAULT_PAGE_SIZE: u32 = 64 * 1024;

/// The hash key of the creation time.
pub(crate) const CREATED_KEY: &str = "__created";
/// The hash key of the last write's time.
pub(crate) const UPDATED_KEY: &str = "__updated";
/// The hash key of the client address a session is bound to.
pub(crate) const ADDRESS_KEY: &str = "__address";
/// The hash key of the user agent a session is bound to.
pub(crate) const USER_AGENT_KEY: &str = "__user_agent";
/// The hash key of the flash values waiting for a request to read them.
pub(crate) const FLASH_KEY: &str = "__flash";

/// The cache key prefixes of a session's three records.
pub(crate) const SESSION_PREFIX: &str = "session:";
pub(crate) const EXPIRES_PREFIX: &str = "expires:";
pub(crate) const FLASH_PREFIX: &str = "flash:";

/// The options of a store in Catalyst mode, named as in Catalyst's `Plugin::Session`
/// configuration; give it to
/// [`SessionStoreBuilder::catalyst`](crate::session::SessionStoreBuilder::catalyst).
///
/// ```
/// use std::time::Duration;
/// use fastmmap::session::{CatalystConfig, CookieConfig, SessionStore};
///
/// let dir = tempfile::tempdir()?;
/// // MyApp->config('Plugin::Session' => { expires => 3600, storage => $path });
/// let store = SessionStore::builder()
///     .path(dir.path().join("session_data"))
///     .catalyst(CatalystConfig::new().expires(Duration::from_secs(3600)))
///     .cookie(CookieConfig::new().name("myapp_session")?.persistent(true))
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct CatalystConfig {
    pub(crate) expires: u64,
    pub(crate) expiry_threshold: u64,
    pub(crate) verify_address: bool,
    pub(crate) verify_user_agent: bool,
    pub(crate) num_pages: u32,
    pub(crate) page_size: u32,
}

impl Default for CatalystConfig {
    fn default() -> Self {
        CatalystConfig {
            expires: CATALYST_DEFAULT_EXPIRES.as_secs(),
            expiry_threshold: 0,
            verify_address: false,
            verify_user_agent: false,
            num_pages: CATALYST_DEFAULT_NUM_PAGES,
            page_size: CATALYST_DEFAULT_PAGE_SIZE,
        }
    }
}

/// Whole seconds in `d`, rounded up (saturating).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

impl CatalystConfig {
    /// Catalyst's defaults: `expires => 7200`, `expiry_threshold => 0`, no verification,
    /// and Cache::FastMmap's default geometry (89 pages of 64 KiB).
    pub fn new() -> CatalystConfig {
        CatalystConfig::default()
    }

    /// `expires`: a session ends this long after its last request (default
    /// [`CATALYST_DEFAULT_EXPIRES`]). Whole seconds, rounded up.
    pub fn expires(mut self, d: Duration) -> Self {
        self.expires = ceil_secs(d);
        self
    }

    /// `expiry_threshold`: a request moves the session's end only when it is at most this
    /// close (default 0: every request that loads the session moves it), or when the request
    /// changed the session.
    pub fn expiry_threshold(mut self, d: Duration) -> Self {
        self.expiry_threshold = ceil_secs(d);
        self
    }

    /// `verify_address`: new sessions record the client address (`__address`), and a
    /// request from another address deletes the session ("address mismatch").
    pub fn verify_address(mut self, yes: bool) -> Self {
        self.verify_address = yes;
        self
    }

    /// `verify_user_agent`: new sessions record the user agent (`__user_agent`), and a
    /// request with another one deletes the session ("user agent mismatch").
    pub fn verify_user_agent(mut self, yes: bool) -> Self {
        self.verify_user_agent = yes;
        self
    }

    /// The geometry of the cache file when the store opens it by path: Store::FastMmap's
    /// `cache_size` / `page_size` as the number of pages and page size Cache::FastMmap
    /// settles on (default 89 pages of 64 KiB, Cache::FastMmap's defaults). A Perl cache
    /// reports them as `$cache->{num_pages}` and `$cache->{page_size}`.
    pub fn geometry(mut self, num_pages: u32, page_size: u32) -> Self {
        self.num_pages = num_pages;
        self.page_size = page_size;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.expires == 0 {
            return Err(Error::InvalidOptions {
                reason: "Catalyst expires must be at least one second".to_owned(),
            });
        }
        Ok(())
    }
}

/// A `session:SID` hash, taken apart.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CatalystRecord {
    pub(crate) created: u64,
    pub(crate) updated: u64,
    /// The application's keys (and Catalyst's other `__` keys, such as `__expire_keys` or
    /// an authentication plugin's `__user`, kept as they are).
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

/// [`bad`], keeping what the Perl decoder or encoder said.
fn bad_perl(reason: &'static str) -> impl FnOnce(crate::perl::Error) -> Error {
    move |e| Error::BadRecord {
        reason,
        source: Some(Box::new(e)),
    }
}

/// A time as Perl may have stored it: a non-negative integer (or a string or float of one).
fn time_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|x| *x >= 0.0).map(|x| x as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|&t| t <= MAX_TIME)
}

/// A binding value: Catalyst stores `$c->request->address || ''` (likewise the agent).
fn text_of(value: Value, what: &'static str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(bad(what)),
    }
}

/// Whether any value in `data` is blessed: an object that Rust would write back as plain
/// data, losing its class.
fn has_object(data: &crate::perl::PerlData) -> bool {
    data.svs().any(|(_, sv)| sv.class.is_some())
}

impl CatalystRecord {
    /// Reads a `session:SID` value as Store::FastMmap writes it (`freeze(\%session)`).
    pub(crate) fn decode(bytes: &[u8]) -> Result<CatalystRecord> {
        let data =
            storable::thaw(bytes).map_err(bad_perl("session:SID is not a Storable image"))?;
        if has_object(&data) {
            return Err(bad(
                "session:SID holds a blessed Perl object, which Rust cannot write back",
            ));
        }
        let mut map: Map = storable::from_data(&data)
            .map_err(bad_perl("session:SID is not a Perl hash of plain data"))?;
        let created = map
            .remove(CREATED_KEY)
            .map(|v| time_of(&v).ok_or_else(|| bad("__created is not a time")))
            .transpose()?;
        let updated = map
            .remove(UPDATED_KEY)
            .map(|v| time_of(&v).ok_or_else(|| bad("__updated is not a time")))
            .transpose()?;
        // Catalyst writes a hash without `__created` when a request that never used the
        // session sets a flash value; `__updated` is in every hash it saves.
        let (created, updated) = match (created, updated) {
            (Some(c), Some(u)) => (c, u),
            (Some(t), None) | (None, Some(t)) => (t, t),
            (None, None) => return Err(bad("session:SID has neither __created nor __updated")),
        };
        let flash = match map.remove(FLASH_KEY) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(f)) => f.into_iter().collect(),
            Some(_) => return Err(bad("__flash is not a hash")),
        };
        let address = map
            .remove(ADDRESS_KEY)
            .map(|v| text_of(v, "__address is not a string"))
            .transpose()?;
        let user_agent = map
            .remove(USER_AGENT_KEY)
            .map(|v| text_of(v, "__user_agent is not a string"))
            .transpose()?;
        Ok(CatalystRecord {
            created,
            updated,
            data: map,
            flash,
            binding: Binding {
                address,
                user_agent,
            },
        })
    }

    /// The `session:SID` value Store::FastMmap would write for this record.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let mut hash = serde_json::Map::new();
        for (k, v) in &self.data {
            hash.insert(k.clone(), v.clone());
        }
        hash.insert(CREATED_KEY.to_owned(), Value::from(self.created));
        hash.insert(UPDATED_KEY.to_owned(), Value::from(self.updated));
        if !self.flash.is_empty() {
            let flash: serde_json::Map<String, Value> = self
                .flash
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            hash.insert(FLASH_KEY.to_owned(), Value::Object(flash));
        }
        if let Some(address) = &self.binding.address {
            hash.insert(ADDRESS_KEY.to_owned(), Value::from(address.as_str()));
        }
        if let Some(agent) = &self.binding.user_agent {
            hash.insert(USER_AGENT_KEY.to_owned(), Value::from(agent.as_str()));
        }
        PerlFormat::default()
            .encode(&Value::Object(hash))
            .map_err(bad_perl("session values cannot be written as Perl data"))
    }
}

/// Reads an `expires:SID` value: a number of Unix seconds.
pub(crate) fn decode_expires(bytes: &[u8]) -> Result<u64> {
    let value: Value = PerlFormat::default()
        .decode(bytes)
        .map_err(bad_perl("expires:SID is not a Storable image"))?;
    time_of(&value).ok_or_else(|| bad("expires:SID is not a time"))
}

/// The `expires:SID` value Catalyst would write for `at`.
pub(crate) fn encode_expires(at: u64) -> Result<Vec<u8>> {
    let at = i64::try_from(at.min(MAX_TIME)).unwrap_or(i64::MAX);
    PerlFormat::default()
        .encode(&at)
        .map_err(bad_perl("an expiry time cannot be written as Perl data"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perl::{PerlData, PerlValue, Sv};
    use proptest::prelude::*;
    use serde_json::json;

    fn record() -> CatalystRecord {
        let mut data = Map::new();
        data.insert("count".into(), json!(3));
        data.insert("user".into(), json!("ada"));
        data.insert("cart".into(), json!([1, "two", {"three": 3.5}]));
        let mut flash = Map::new();
        flash.insert("msg".into(), json!("hello"));
        CatalystRecord {
            created: 1_700_000_000,
            updated: 1_700_000_100,
            data,
            flash,
            binding: Binding {
                address: Some("127.0.0.1".into()),
                user_agent: None,
            },
        }
    }

    #[test]
    fn a_record_round_trips_with_catalysts_keys() {
        let r = record();
        let bytes = r.encode().unwrap();
        assert_eq!(CatalystRecord::decode(&bytes).unwrap(), r);
        // What Perl sees: one hash with the internal keys beside the application's.
        let hash: Map = PerlFormat::default().decode(&bytes).unwrap();
        assert_eq!(hash["__created"], json!(1_700_000_000));
        assert_eq!(hash["__flash"], json!({"msg": "hello"}));
        assert_eq!(hash["__address"], json!("127.0.0.1"));
        assert!(!hash.contains_key("__user_agent"));
        assert_eq!(hash["count"], json!(3));
    }

    #[test]
    fn numbers_stay_numbers_and_strings_stay_strings_for_perl() {
        let bytes = record().encode().unwrap();
        let data = storable::thaw(&bytes).unwrap();
        let hash = data.deref(data.root()).unwrap();
        let count = data.hash_get(hash, "count").unwrap();
        assert_eq!(data[count].value, PerlValue::Int(3));
        let user = data.hash_get(hash, "user").unwrap();
        assert_eq!(data[user].value, PerlValue::string("ada"));
    }

    #[test]
    fn a_flash_only_hash_from_catalyst_is_read() {
        // `$c->flash(msg => 'x')` in a request that never touched `$c->session`.
        let bytes = PerlFormat::default()
            .encode(&json!({"__updated": 1_700_000_000, "__flash": {"msg": "x"}}))
            .unwrap();
        let r = CatalystRecord::decode(&bytes).unwrap();
        assert_eq!((r.created, r.updated), (1_700_000_000, 1_700_000_000));
        assert_eq!(r.flash["msg"], json!("x"));
        assert!(r.data.is_empty());
    }

    #[test]
    fn expires_round_trips_as_a_number() {
        let bytes = encode_expires(1_700_007_200).unwrap();
        assert_eq!(decode_expires(&bytes).unwrap(), 1_700_007_200);
        assert_eq!(
            PerlFormat::default().decode::<i64>(&bytes).unwrap(),
            1_700_007_200
        );
        // A string of digits, as Perl may hold a number, is read too.
        let text = PerlFormat::default().encode("1700007200").unwrap();
        assert_eq!(decode_expires(&text).unwrap(), 1_700_007_200);
    }

    #[test]
    fn what_perl_cannot_have_written_is_a_bad_record() {
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"not storable".to_vec(),
            PerlFormat::default().encode(&json!([1, 2])).unwrap(),
            PerlFormat::default().encode(&json!("string")).unwrap(),
            PerlFormat::default().encode(&json!({"user": "x"})).unwrap(),
            PerlFormat::default()
                .encode(&json!({"__created": "yesterday"}))
                .unwrap(),
            PerlFormat::default()
                .encode(&json!({"__created": -5, "__updated": 1}))
                .unwrap(),
            PerlFormat::default()
                .encode(&json!({"__created": 1, "__flash": [1]}))
                .unwrap(),
            PerlFormat::default()
                .encode(&json!({"__created": 1, "__address": {"a": 1}}))
                .unwrap(),
        ];
        for bytes in cases {
            assert!(
                matches!(CatalystRecord::decode(&bytes), Err(Error::BadRecord { .. })),
                "{bytes:?}"
            );
        }
        for bytes in [b"".to_vec(), PerlFormat::default().encode("soon").unwrap()] {
            assert!(matches!(
                decode_expires(&bytes),
                Err(Error::BadRecord { .. })
            ));
        }
    }

    #[test]
    fn a_blessed_object_is_left_alone() {
        let mut data = PerlData::new(PerlValue::Undef);
        let created = data.push(PerlValue::Int(1));
        let object = data.push(Sv::blessed(PerlValue::Hash(Vec::new()), "MyApp::User"));
        let user = data.push(PerlValue::Ref(crate::perl::PerlRef::to(object)));
        let hash = data.push(PerlValue::Hash(vec![
            ("__created".into(), created),
            ("user".into(), user),
        ]));
        let root = data.push(PerlValue::Ref(crate::perl::PerlRef::to(hash)));
        data.set_root(root);
        let bytes = storable::freeze(&data).unwrap();
        assert!(matches!(
            CatalystRecord::decode(&bytes),
            Err(Error::BadRecord { .. })
        ));
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            created in 0..=MAX_TIME,
            later in 0u64..1_000_000,
            data in prop::collection::btree_map("[a-z][a-z0-9_]{0,8}", json_value(), 0..6),
            flash in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
            address in proptest::option::of("[0-9.:a-f]{0,20}"),
            user_agent in proptest::option::of(".{0,30}"),
        ) {
            let r = CatalystRecord {
                created,
                updated: created.saturating_add(later).min(MAX_TIME),
                data,
                flash,
                binding: Binding { address, user_agent },
            };
            let back = CatalystRecord::decode(&r.encode().unwrap()).unwrap();
            // Floats that are whole numbers come back as integers, as Perl stores them.
            prop_assert_eq!(back.created, r.created);
            prop_assert_eq!(back.updated, r.updated);
            prop_assert_eq!(back.binding, r.binding);
            prop_assert_eq!(back.data.len(), r.data.len());
            prop_assert_eq!(back.flash.len(), r.flash.len());
            for (k, v) in &r.data {
                prop_assert!(same_value(&back.data[k], v), "{k}: {:?} vs {v:?}", back.data[k]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = CatalystRecord::decode(&bytes);
            let _ = decode_expires(&bytes);
        }
    }

    /// Equal as Perl sees values: numbers by value.
    fn same_value(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
            }
            _ => a == b,
        }
    }
}
