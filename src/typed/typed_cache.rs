//! `TypedCache`: a `Cache` whose values are of one serde type.

use std::marker::PhantomData;

use super::codec::{Codec, CodecError};
use crate::{Cache, Error, Expiry, Result, Update};

/// Which of the codec's directions failed inside an update.
enum Failed {
    Decode(CodecError),
    Encode(CodecError),
}

/// A [`Cache`] whose values are `V`s, stored through the codec `C`, under keys `K` (anything
/// that is bytes: `str`, `[u8]`, `String`, `Vec<u8>`).
///
/// Every call is the [`Cache`] call of the same name with the value encoded or decoded: a
/// backing store, write-back and compression work the same (the backing store sees the
/// encoded bytes). A stored value that does not decode is [`Error::Decode`] naming the key,
/// never a panic, and nothing is changed.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use fastmmap::{Cache, Update, typed::{Postcard, TypedCache}};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct User { name: String, visits: u32 }
///
/// let dir = tempfile::tempdir()?;
/// let cache = Cache::open(dir.path().join("users"))?;
/// let users: TypedCache<str, User, _> = TypedCache::new(cache, Postcard);
///
/// users.set("ada", &User { name: "Ada".into(), visits: 1 })?;
/// users.update("ada", |u| match u {
///     Some(u) => Update::Set(User { visits: u.visits + 1, ..u }),
///     None => Update::Keep,
/// })?;
/// assert_eq!(users.get("ada")?, Some(User { name: "Ada".into(), visits: 2 }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedCache<K: ?Sized, V, C> {
    cache: Cache,
    codec: C,
    _types: PhantomData<fn(&K, V) -> V>,
}

impl<K: ?Sized, V, C: Clone> Clone for TypedCache<K, V, C> {
    fn clone(&self) -> Self {
        TypedCache {
            cache: self.cache.clone(),
            codec: self.codec.clone(),
            _types: PhantomData,
        }
    }
}

impl<K: ?Sized, V, C: std::fmt::Debug> std::fmt::Debug for TypedCache<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedCache")
            .field("cache", &self.cache)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<K, V, C> TypedCache<K, V, C>
where
    K: AsRef<[u8]> + ?Sized,
    C: Codec<V>,
{
    /// Typed access to `cache` through `codec`.
    pub fn new(cache: Cache, codec: C) -> Self {
        TypedCache {
            cache,
            codec,
            _types: PhantomData,
        }
    }

    /// The untyped cache underneath.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<V> {
        self.codec
            .decode(bytes)
            .map_err(|source| self.decode_error(key, source))
    }

    fn decode_error(&self, key: &[u8], source: CodecError) -> Error {
        // The cache's own: it names the key and counts the fault.
        self.cache.decode_error(key, source)
    }

    fn encode(&self, key: &[u8], value: &V) -> Result<Vec<u8>> {
        self.codec.encode(value).map_err(|source| Error::Encode {
            path: self.cache.path().to_path_buf(),
            key: key.to_vec(),
            source,
        })
    }

    /// The value under `key`, decoded.
    ///
    /// # Errors
    /// [`Error::Decode`] if the stored bytes are not a `V`; as [`Cache::get`].
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let key = key.as_ref();
        match self.cache.get(key)? {
            Some(bytes) => self.decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key` with the default expiry.
    ///
    /// # Errors
    /// [`Error::Encode`] if the codec cannot encode it (nothing is stored); as [`Cache::set`].
    pub fn set(&self, key: &K, value: &V) -> Result<bool> {
        self.set_with(key, value, Expiry::Default)
    }

    /// Stores `value` under `key` with `expiry`.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn set_with(&self, key: &K, value: &V, expiry: Expiry) -> Result<bool> {
        let key = key.as_ref();
        let bytes = self.encode(key, value)?;
        self.cache.set_with(key, &bytes, expiry)
    }

    /// Removes `key`; whether it held a value. As [`Cache::remove`].
    ///
    /// # Errors
    /// As [`Cache::remove`].
    pub fn remove(&self, key: &K) -> Result<bool> {
        self.cache.remove(key.as_ref())
    }

    /// Removes `key` and returns its value. As [`Cache::take`].
    ///
    /// # Errors
    /// [`Error::Decode`] if the value taken does not decode (it is gone all the same); as
    /// [`Cache::take`].
    pub fn take(&self, key: &K) -> Result<Option<V>> {
        let key = key.as_ref();
        match self.cache.take(key)? {
            Some(bytes) => self.decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The value under `key`, or else `f()`, stored. As [`Cache::get_or_insert_with`]: a
    /// value another writer stored meanwhile wins and is returned.
    ///
    /// # Errors
    /// As [`get`](Self::get) and [`set`](Self::set).
    pub fn get_or_insert_with(&self, key: &K, f: impl FnOnce() -> V) -> Result<V> {
        if let Some(v) = self.get(key)? {
            return Ok(v);
        }
        let key = key.as_ref();
        let value = f();
        let bytes = self.encode(key, &value)?;
        let stored = self.cache.get_or_insert_with(key, || bytes.clone())?;
        if stored == bytes {
            Ok(value)
        } else {
            self.decode(key, &stored)
        }
    }

    /// Atomic read-modify-write, as [`Cache::update`]: `f` sees the decoded value under the
    /// page lock and says what to do.
    ///
    /// # Errors
    /// [`Error::Decode`] if the current value does not decode (`f` is not called, nothing
    /// changes); [`Error::Encode`] if the new value does not encode (nothing changes); as
    /// [`Cache::update`].
    pub fn update(&self, key: &K, f: impl FnOnce(Option<V>) -> Update<V>) -> Result<()> {
        self.update_with(key, |v| (f(v), ()))
    }

    /// As [`update`](Self::update), returning what `f` computed under the lock.
    ///
    /// # Errors
    /// As [`update`](Self::update).
    pub fn update_with<R>(
        &self,
        key: &K,
        f: impl FnOnce(Option<V>) -> (Update<V>, R),
    ) -> Result<R> {
        let key = key.as_ref();
        // Decoding or encoding may fail under the lock: the entry is then kept, and the error
        // comes out with the closure's result.
        let outcome = self.cache.update_with(key, |existing| {
            let current = match existing.map(|e| self.codec.decode(e.value)).transpose() {
                Ok(current) => current,
                Err(e) => return (Update::Keep, Err(Failed::Decode(e))),
            };
            let (change, r) = f(current);
            let update = match change {
                Update::Keep => Update::Keep,
                Update::Remove => Update::Remove,
                Update::Set(v) => match self.codec.encode(&v) {
                    Ok(bytes) => Update::Set(bytes),
                    Err(e) => return (Update::Keep, Err(Failed::Encode(e))),
                },
                Update::SetWith(v, expiry) => match self.codec.encode(&v) {
                    Ok(bytes) => Update::SetWith(bytes, expiry),
                    Err(e) => return (Update::Keep, Err(Failed::Encode(e))),
                },
            };
            (update, Ok(r))
        })?;
        outcome.map_err(|e| match e {
            Failed::Decode(decode) => self.decode_error(key, decode),
            Failed::Encode(encode) => Error::Encode {
                path: self.cache.path().to_path_buf(),
                key: key.to_vec(),
                source: encode,
            },
        })
    }
}
