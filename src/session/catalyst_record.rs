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

use crate::perl::{HashKey, PerlData, PerlFormat, PerlRef, PerlValue, SvId, storable};
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
#[derive(Clone, Debug)]
pub(crate) struct CatalystRecord {
    pub(crate) created: u64,
    pub(crate) updated: u64,
    /// The application's keys (and Catalyst's other `__` keys, such as `__expire_keys` or
    /// an authentication plugin's `__user`, kept as they are).
    pub(crate) data: Map,
    pub(crate) flash: Map,
    pub(crate) binding: Binding,
    /// The Perl hash this record was read from, if it was: what [`encode`](Self::encode)
    /// writes back unchanged.
    pub(crate) stored: Option<Stored>,
}

impl PartialEq for CatalystRecord {
    /// Equal as sessions: same times, values, flash and binding (wherever they were read
    /// from).
    fn eq(&self, other: &CatalystRecord) -> bool {
        self.created == other.created
            && self.updated == other.updated
            && self.data == other.data
            && self.flash == other.flash
            && self.binding == other.binding
    }
}

/// A `session:SID` hash as Perl stored it, and the JSON each of its keys was read as.
///
/// Writing a record back starts from this: a key whose JSON is unchanged keeps its Perl
/// value, objects and all (blessed values, `STORABLE_freeze` hook objects, shared values,
/// byte and character strings), so that Perl thaws the same thing — byte for byte the same
/// when no value is shared between a changed key and another.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// The thawed image.
    perl: PerlData,
    /// The session hash in it.
    hash: SvId,
    /// Its entries, in the image's order.
    entries: Vec<(HashKey, SvId)>,
    /// What each key read as, by key text.
    json: Map,
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

/// Which value of a session hash could not be read, and why.
#[derive(Debug, thiserror::Error)]
#[error("in the value of session key {key:?}")]
struct InKey {
    key: String,
    #[source]
    source: crate::perl::Error,
}

/// How many keys [`unreadable`] tries, to name the one JSON cannot hold.
const MAX_KEYS_TRIED: usize = 32;

/// The error of a thawed `session:SID` that does not read as a map of JSON values: naming the
/// first key whose value does not (a cycle, say), when it is a hash.
fn unreadable(perl: &PerlData, whole: crate::perl::Error) -> Error {
    let reason = "session:SID is not a Perl hash whose values JSON can hold";
    let entries = match perl.deref(perl.root()).map(|id| &perl[id].value) {
        Some(PerlValue::Hash(entries)) => entries,
        _ => return bad_perl(reason)(whole),
    };
    // Each try scans the whole data once: a bounded number of keys is tried.
    let mut one = perl.clone();
    for (key, id) in entries.iter().take(MAX_KEYS_TRIED) {
        one.set_root(*id);
        if let Err(source) = storable::from_data::<Value>(&one) {
            return Error::BadRecord {
                reason,
                source: Some(Box::new(InKey {
                    key: key.text().into_owned(),
                    source,
                })),
            };
        }
    }
    bad_perl(reason)(whole)
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

impl CatalystRecord {
    /// Reads a `session:SID` value as Store::FastMmap writes it (`freeze(\%session)`).
    ///
    /// Objects are read as [`storable::from_data`] reads them (a blessed hash as its hash, a
    /// hook object as `{class, frozen, refs}`) and kept for [`encode`](Self::encode).
    pub(crate) fn decode(bytes: &[u8]) -> Result<CatalystRecord> {
        let perl = storable::thaw(bytes)
            .map_err(bad_perl("session:SID cannot be read as a Storable image"))?;
        let mut map: Map = storable::from_data(&perl).map_err(|e| unreadable(&perl, e))?;
        let hash = perl
            .deref(perl.root())
            .ok_or_else(|| bad("session:SID is not a Perl hash"))?;
        let PerlValue::Hash(entries) = &perl[hash].value else {
            return Err(bad("session:SID is not a Perl hash"));
        };
        let entries = entries.clone();
        let json = map.clone();
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
            stored: Some(Stored {
                perl,
                hash,
                entries,
                json,
            }),
        })
    }

    /// The `session:SID` value Store::FastMmap would write for this record: the stored hash
    /// with only the changed keys rewritten, when it was read from one.
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
        let Some(stored) = &self.stored else {
            return PerlFormat::default()
                .encode(&Value::Object(hash))
                .map_err(bad_perl("session values cannot be written as Perl data"));
        };
        let mut perl = stored.perl.clone();
        let old = |k: &str| stored.json.get(k);
        let entries = splice(&mut perl, &stored.entries, &old, &hash, true)?;
        if let Some(sv) = perl.get_mut(stored.hash) {
            sv.value = PerlValue::Hash(entries);
        }
        storable::freeze(&perl).map_err(bad_perl("session values cannot be written as Perl data"))
    }
}

/// The entries of a stored hash written back as `new` says: a key whose JSON is what it read
/// as (`old`) keeps its Perl value, a changed key gets `new`'s value in its place (in
/// `__flash` too, when `flash`: the flash hash is spliced the same way, so that its other
/// values stay as Perl stored them), a missing key goes, and new keys follow.
fn splice<'a>(
    perl: &mut PerlData,
    entries: &[(HashKey, SvId)],
    old: &dyn Fn(&str) -> Option<&'a Value>,
    new: &serde_json::Map<String, Value>,
    flash: bool,
) -> Result<Vec<(HashKey, SvId)>> {
    let mut out = Vec::with_capacity(new.len());
    let mut seen = std::collections::HashSet::new();
    for (key, id) in entries {
        let text = key.text();
        seen.insert(text.clone().into_owned());
        let Some(value) = new.get(&*text) else {
            continue; // deleted
        };
        let was = old(&text);
        if was == Some(value) {
            out.push((key.clone(), *id));
            continue;
        }
        let inner = perl.deref(*id).and_then(|h| match &perl[h].value {
            PerlValue::Hash(inner) => Some(inner.clone()),
            _ => None,
        });
        let spliced = match (flash && text == FLASH_KEY, was, value, inner) {
            (true, Some(Value::Object(was)), Value::Object(value), Some(inner)) => {
                let inner = splice(perl, &inner, &|k| was.get(k), value, false)?;
                let hash = perl.push(PerlValue::Hash(inner));
                perl.push(PerlValue::Ref(PerlRef::to(hash)))
            }
            _ => graft(perl, value)?,
        };
        out.push((key.clone(), spliced));
    }
    for (text, value) in new {
        if !seen.contains(text) {
            let id = graft(perl, value)?;
            out.push((HashKey::from(text.as_str()), id));
        }
    }
    Ok(out)
}

/// Adds `value` to `perl` as a scalar that can be a hash value; returns its id.
fn graft(perl: &mut PerlData, value: &Value) -> Result<SvId> {
    let data = storable::to_scalar_data(value)
        .map_err(bad_perl("session values cannot be written as Perl data"))?;
    perl.append(data)
        .map_err(bad_perl("session values cannot be added to the Perl data"))
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
    use crate::perl::{Hook, HookKind, Sv};
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
            stored: None,
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

    /// A session as a Catalyst application may hold it: a blessed user, a DateTime-like
    /// object frozen by its hook (referring to a blessed locale and a scalar), a character
    /// string and a count. Returns the data and the ids of `count` and `__updated`.
    fn session_with_objects() -> (PerlData, SvId, SvId) {
        let mut data = PerlData::new(PerlValue::Undef);
        let created = data.push(PerlValue::Int(1_700_000_000));
        let updated = data.push(PerlValue::Int(1_700_000_100));
        let id = data.push(PerlValue::Int(7));
        let name = data.push(PerlValue::Bytes(b"ada".to_vec()));
        let user = data.push(Sv::blessed(
            PerlValue::Hash(vec![("id".into(), id), ("name".into(), name)]),
            "MyApp::User",
        ));
        let user_ref = data.push(PerlValue::Ref(PerlRef::to(user)));
        let code = data.push(PerlValue::Bytes(b"en-US".to_vec()));
        let locale = data.push(Sv::blessed(
            PerlValue::Hash(vec![("code".into(), code)]),
            "DateTime::Locale::FromData",
        ));
        let formatter = data.push(PerlValue::Undef);
        let when = data.push(Sv::blessed(
            PerlValue::Hook(Hook::new(
                HookKind::Hash,
                b"utc_rd_days:738000|utc_rd_secs:0|rd_nanosecs:0|version:1.59".to_vec(),
                vec![locale, formatter],
            )),
            "DateTime",
        ));
        let mut when_ref = PerlRef::to(when);
        when_ref.overloaded = true;
        let when_ref = data.push(PerlValue::Ref(when_ref));
        let greeting = data.push(PerlValue::Str("zo\u{eb}".into()));
        let count = data.push(PerlValue::Int(3));
        let hash = data.push(PerlValue::Hash(vec![
            ("user".into(), user_ref),
            ("__updated".into(), updated),
            ("when".into(), when_ref),
            ("count".into(), count),
            ("greeting".into(), greeting),
            ("__created".into(), created),
        ]));
        let root = data.push(PerlValue::Ref(PerlRef::to(hash)));
        data.set_root(root);
        (data, count, updated)
    }

    #[test]
    fn objects_are_read_and_written_back_untouched() {
        let (data, count, updated) = session_with_objects();
        let bytes = storable::freeze(&data).unwrap();
        let mut record = CatalystRecord::decode(&bytes).unwrap();
        assert_eq!(record.data["user"], json!({"id": 7, "name": "ada"}));
        assert_eq!(record.data["when"]["class"], json!("DateTime"));
        assert_eq!(record.data["greeting"], json!("zo\u{eb}"));
        // Unchanged: the same bytes.
        assert_eq!(record.encode().unwrap(), bytes);

        // One key changed (and the save's time): every other key keeps its bytes, in place.
        record.data.insert("count".into(), json!(4));
        record.updated = 1_700_000_200;
        let written = record.encode().unwrap();
        let mut expected = data.clone();
        expected.get_mut(count).unwrap().value = PerlValue::Int(4);
        expected.get_mut(updated).unwrap().value = PerlValue::Int(1_700_000_200);
        assert_eq!(written, storable::freeze(&expected).unwrap());

        // A key added and one removed: the objects are still there, as they were.
        let mut record = CatalystRecord::decode(&written).unwrap();
        record.data.remove("user");
        record.data.insert("cart".into(), json!(["book"]));
        let back = storable::thaw(&record.encode().unwrap()).unwrap();
        let hash = back.deref(back.root()).unwrap();
        assert!(back.hash_get(hash, "user").is_none());
        let when = back.deref(back.hash_get(hash, "when").unwrap()).unwrap();
        let PerlValue::Hook(hook) = &back[when].value else {
            panic!("not a hook object: {:?}", back[when]);
        };
        assert_eq!(back[when].class.as_deref(), Some("DateTime"));
        assert_eq!(
            back[hook.refs[0]].class.as_deref(),
            Some("DateTime::Locale::FromData")
        );
        let record = CatalystRecord::decode(&storable::freeze(&back).unwrap()).unwrap();
        assert_eq!(record.data["cart"], json!(["book"]));
        assert_eq!(record.data["count"], json!(4));
    }

    #[test]
    fn a_flash_value_added_in_rust_leaves_perls_flash_objects_alone() {
        let (mut data, _, _) = session_with_objects();
        let hash = data.deref(data.root()).unwrap();
        let field = data.push(PerlValue::string("email"));
        let error = data.push(Sv::blessed(
            PerlValue::Hash(vec![("field".into(), field)]),
            "MyApp::FormError",
        ));
        let error_ref = data.push(PerlValue::Ref(PerlRef::to(error)));
        let flash = data.push(PerlValue::Hash(vec![("error".into(), error_ref)]));
        let flash_ref = data.push(PerlValue::Ref(PerlRef::to(flash)));
        if let PerlValue::Hash(entries) = &mut data.get_mut(hash).unwrap().value {
            entries.push(("__flash".into(), flash_ref));
        }
        let mut record = CatalystRecord::decode(&storable::freeze(&data).unwrap()).unwrap();
        assert_eq!(record.flash["error"], json!({"field": "email"}));
        record.flash.insert("msg".into(), json!("saved"));
        let back = storable::thaw(&record.encode().unwrap()).unwrap();
        let hash = back.deref(back.root()).unwrap();
        let flash = back.hash_get(hash, "__flash").unwrap();
        let error = back.deref(back.hash_get(flash, "error").unwrap()).unwrap();
        assert_eq!(back[error].class.as_deref(), Some("MyApp::FormError"));
        let msg = back.hash_get(flash, "msg").unwrap();
        assert_eq!(back[msg].value, PerlValue::string("saved"));
    }

    #[test]
    fn an_object_the_application_replaces_is_written_as_plain_data() {
        let (data, _, _) = session_with_objects();
        let mut record = CatalystRecord::decode(&storable::freeze(&data).unwrap()).unwrap();
        record.data.insert("user".into(), json!({"id": 8}));
        let back = storable::thaw(&record.encode().unwrap()).unwrap();
        let hash = back.deref(back.root()).unwrap();
        let user = back.deref(back.hash_get(hash, "user").unwrap()).unwrap();
        assert_eq!(back[user].class, None);
        assert_eq!(
            storable::from_data::<Map>(&back).unwrap()["user"],
            json!({"id": 8})
        );
    }

    #[test]
    fn a_value_json_cannot_hold_is_named() {
        let (mut data, count, _) = session_with_objects();
        // $session->{count} = \\@loop where @loop holds a reference to itself.
        let list = data.push(PerlValue::Array(Vec::new()));
        let list_ref = data.push(PerlValue::Ref(PerlRef::to(list)));
        data.get_mut(list).unwrap().value = PerlValue::Array(vec![list_ref]);
        data.get_mut(count).unwrap().value = PerlValue::Ref(PerlRef::to(list));
        let e = CatalystRecord::decode(&storable::freeze(&data).unwrap()).unwrap_err();
        assert!(e.to_string().contains("session:SID"), "{e}");
        let source = std::error::Error::source(&e).expect("which key");
        assert!(source.to_string().contains("\"count\""), "{source}");
        let cause = std::error::Error::source(source).expect("why");
        assert!(cause.to_string().contains("cycle"), "{cause}");
    }

    #[test]
    fn an_unreadable_record_says_where_and_why() {
        let (data, _, _) = session_with_objects();
        let mut bytes = storable::freeze(&data).unwrap();
        let at = bytes.len() - 20;
        bytes[at] = 0xee; // an unknown marker, or a length running past the end
        bytes.truncate(bytes.len() - 3);
        let e = CatalystRecord::decode(&bytes).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("session:SID"), "{text}");
        let source = std::error::Error::source(&e).expect("the decoder's error");
        assert!(source.to_string().contains("at byte"), "{source}");
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
                stored: None,
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

        /// Random Perl data (objects, hooks, sharing, cycles) under two keys of a session:
        /// when Rust can read it, writing it back unchanged gives the same bytes, and so does
        /// changing another key, but for that key's value.
        #[test]
        fn random_perl_values_are_written_back_as_they_were(seed in any::<u64>()) {
            let (data, count) = session_of(seed);
            let bytes = storable::freeze(&data).unwrap();
            let Ok(mut record) = CatalystRecord::decode(&bytes) else {
                return Ok(()); // a cycle or too deep for JSON: a bad record, tested elsewhere
            };
            prop_assert_eq!(&record.encode().unwrap(), &bytes);
            record.data.insert("count".into(), json!(-5));
            let mut expected = data.clone();
            expected.get_mut(count).unwrap().value = PerlValue::Int(-5);
            prop_assert_eq!(record.encode().unwrap(), storable::freeze(&expected).unwrap());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = CatalystRecord::decode(&bytes);
            let _ = decode_expires(&bytes);
        }
    }

    /// A session hash with `crate::perl::tests::random_data` under two keys (the second
    /// time with another seed), and the id of its `count`.
    fn session_of(seed: u64) -> (PerlData, SvId) {
        let mut data = PerlData::new(PerlValue::Undef);
        let created = data.push(PerlValue::Int(1_700_000_000));
        let updated = data.push(PerlValue::Int(1_700_000_100));
        let count = data.push(PerlValue::Int(1));
        let mut entries = vec![
            ("__created".into(), created),
            ("count".into(), count),
            ("__updated".into(), updated),
        ];
        for (key, seed) in [("a", seed), ("b", seed.rotate_left(17))] {
            let random = crate::perl::tests::random_data(seed);
            let root = data.append(random).unwrap();
            let value = if data[root].value.is_container() {
                data.push(PerlValue::Ref(PerlRef::to(root)))
            } else {
                root
            };
            entries.insert(1, (key.into(), value));
        }
        let hash = data.push(PerlValue::Hash(entries));
        let root = data.push(PerlValue::Ref(PerlRef::to(hash)));
        data.set_root(root);
        (data, count)
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
