//! [`PerlData`]: a Perl data structure as a graph of values (SVs), the way Perl holds it and
//! Storable freezes it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Index;
use std::sync::Arc;

/// The position of one value (one Perl SV) inside a [`PerlData`].
///
/// Ids come from [`PerlData::push`] (or from a decoded image, where they are Storable's own
/// object numbers); an id is only meaningful in the `PerlData` it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvId(u32);

impl SvId {
    /// The id's position in [`PerlData::svs`] (order of creation).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn from_index(index: usize) -> Option<SvId> {
        u32::try_from(index).ok().map(SvId)
    }
}

/// One Perl value (an SV): what it holds and the class it is blessed into.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Sv {
    /// What the value holds.
    pub value: PerlValue,
    /// The class (package) the value is blessed into, if any. In Perl an object is a reference
    /// to a blessed value: `bless {}, 'Foo'` blesses the hash, so here it is the
    /// [`PerlValue::Hash`] that has `class` `Foo`, and a [`PerlValue::Ref`] points to it.
    /// A [`PerlValue::Hook`] object always has one.
    pub class: Option<Arc<str>>,
}

impl Sv {
    /// An unblessed value.
    pub fn new(value: PerlValue) -> Sv {
        Sv { value, class: None }
    }

    /// A value blessed into `class`.
    pub fn blessed(value: PerlValue, class: impl Into<Arc<str>>) -> Sv {
        Sv {
            value,
            class: Some(class.into()),
        }
    }
}

impl From<PerlValue> for Sv {
    fn from(value: PerlValue) -> Sv {
        Sv::new(value)
    }
}

/// What one Perl value holds.
///
/// Scalars are `Undef` to `Str`; `Array` and `Hash` are Perl's arrays and hashes, whose
/// elements are scalars (ids of other values); `Ref` is a scalar holding a reference. A Perl
/// array of arrays is therefore an `Array` whose elements are `Ref`s to `Array`s, exactly as in
/// Perl.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PerlValue {
    /// `undef`.
    Undef,
    /// Perl's immortal true or false (what `\!!1` refers to), or a boolean of Storable ≥ 3.32.
    /// Written back as Storable's `SX_SV_YES` / `SX_SV_NO`, which Perl thaws as read-only
    /// values. (Rust `bool`s are serialized as the integers 1 and 0, not as this.)
    Bool(bool),
    /// An integer (Perl's IV).
    Int(i64),
    /// A floating-point number (Perl's NV).
    Num(f64),
    /// A byte string: a Perl string without the UTF-8 flag. Perl reads its bytes as Latin-1
    /// characters; programs often keep UTF-8 text in such strings without decoding it.
    Bytes(Vec<u8>),
    /// A character string: a Perl string with the UTF-8 flag on.
    Str(String),
    /// An array: the ids of its elements, in order.
    Array(Vec<SvId>),
    /// A hash: its keys and the ids of their values, in the order they were frozen (Perl's
    /// hash order carries no meaning). Keys are unique, as Perl sees keys (see [`HashKey`]).
    Hash(Vec<(HashKey, SvId)>),
    /// A reference to another value.
    Ref(PerlRef),
    /// An object its class froze with a `STORABLE_freeze` hook (DateTime, DBIx::Class rows,
    /// …): what the hook returned, kept as it is so that it is written back exactly and Perl's
    /// `STORABLE_thaw` rebuilds the object. Its [`Sv::class`] is the object's class (required).
    Hook(Hook),
}

/// An object frozen by its class's `STORABLE_freeze` hook (Storable's `SX_HOOK`).
///
/// Perl calls `$object->STORABLE_freeze($cloning)`, which returns a string and, optionally,
/// references to further values; Storable stores the string as it is and the referred values
/// as ordinary Perl data (shared with the rest of the image). To thaw it Perl creates an empty
/// scalar, array or hash (`kind`), blesses it into the class and calls
/// `STORABLE_thaw($cloning, $frozen, @refs)`. Rust cannot run the hook: it keeps the three
/// parts, so the object survives a read and a write back untouched.
///
/// ```
/// use fastmmap::perl::{Hook, HookKind, PerlData, PerlRef, PerlValue, Sv, storable};
///
/// // bless({}, 'My::Point') whose STORABLE_freeze returns ("1,2", [3]).
/// let mut data = PerlData::new(PerlValue::Undef);
/// let three = data.push(PerlValue::Int(3));
/// let list = data.push(PerlValue::Array(vec![three]));
/// let point = data.push(Sv::blessed(
///     PerlValue::Hook(Hook::new(HookKind::Hash, b"1,2".to_vec(), vec![list])),
///     "My::Point",
/// ));
/// let root = data.push(PerlValue::Ref(PerlRef::to(point)));
/// data.set_root(root);
/// let image = storable::freeze(&data)?;
/// assert_eq!(storable::thaw(&image)?, data);
/// # Ok::<(), fastmmap::perl::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Hook {
    /// What the object is in Perl: a blessed scalar, array or hash.
    pub kind: HookKind,
    /// The string `STORABLE_freeze` returned first (its bytes, opaque to Storable).
    pub frozen: Vec<u8>,
    /// The values the further references it returned refer to, in order: `STORABLE_thaw`
    /// receives a reference to each. (Ids of the referred values, which may be arrays and
    /// hashes, not of references to them.)
    pub refs: Vec<SvId>,
}

impl Hook {
    /// A hook object of `kind` with the hook's string and referred values.
    pub fn new(kind: HookKind, frozen: Vec<u8>, refs: Vec<SvId>) -> Hook {
        Hook { kind, frozen, refs }
    }
}

/// What a [`Hook`] object is in Perl (Storable's `SHT_SCALAR`, `SHT_ARRAY`, `SHT_HASH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    /// A blessed scalar (`bless \$x, ...`).
    Scalar,
    /// A blessed array.
    Array,
    /// A blessed hash.
    Hash,
}

impl PerlValue {
    /// A string value as Perl would hold a Rust string literal: a byte string when it is
    /// ASCII, a character string otherwise. (Both print the same in Perl.)
    pub fn string(s: &str) -> PerlValue {
        if s.is_ascii() {
            PerlValue::Bytes(s.as_bytes().to_vec())
        } else {
            PerlValue::Str(s.to_owned())
        }
    }

    /// `true` for `Array` and `Hash`, which in Perl can only be reached through a reference
    /// (or be the root of an image), never stored directly in another array or hash.
    pub fn is_container(&self) -> bool {
        match self {
            PerlValue::Array(_) | PerlValue::Hash(_) => true,
            PerlValue::Hook(h) => h.kind != HookKind::Scalar,
            _ => false,
        }
    }

    /// A short name of the kind of value, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PerlValue::Undef => "undef",
            PerlValue::Bool(_) => "boolean",
            PerlValue::Int(_) => "integer",
            PerlValue::Num(_) => "number",
            PerlValue::Bytes(_) | PerlValue::Str(_) => "string",
            PerlValue::Array(_) => "array",
            PerlValue::Hash(_) => "hash",
            PerlValue::Ref(_) => "reference",
            PerlValue::Hook(_) => "object frozen by a STORABLE_freeze hook",
        }
    }
}

/// A reference (`\$x`, `[...]`, `{...}`, an object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PerlRef {
    /// The value referred to.
    pub target: SvId,
    /// A weak reference (`Scalar::Util::weaken`).
    pub weak: bool,
    /// The target is an object of a class with overloaded operators (Storable's
    /// `SX_OVERLOAD`); Perl loads the class when it thaws the reference.
    pub overloaded: bool,
}

impl PerlRef {
    /// A plain (strong, not overloaded) reference to `target`.
    pub fn to(target: SvId) -> PerlRef {
        PerlRef {
            target,
            weak: false,
            overloaded: false,
        }
    }
}

/// A hash key.
///
/// Perl keys are character strings; a key is stored as bytes when every character is below
/// 256. `Bytes` is a key Perl stored without the UTF-8 flag (its bytes are Latin-1
/// characters); `Str` one that was a character string. The Perl key `"é"` as bytes
/// (`"\xe9"`) and as characters are the same key to Perl, so one hash never holds both.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashKey {
    /// A key without the UTF-8 flag.
    Bytes(Vec<u8>),
    /// A key that was a character string.
    Str(String),
}

impl HashKey {
    /// The key as text: a `Str` as it is; `Bytes` as UTF-8 when they are valid UTF-8 (as Perl
    /// programs often keep text), otherwise as Latin-1 (what the bytes mean to Perl).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            HashKey::Str(s) => Cow::Borrowed(s),
            HashKey::Bytes(b) => bytes_as_text(b),
        }
    }

    /// The key as Perl identifies it: Latin-1 bytes when every character is below 256 (with
    /// `false`), else UTF-8 (with `true`).
    pub(crate) fn perl_identity(&self) -> (bool, Cow<'_, [u8]>) {
        match self {
            HashKey::Bytes(b) => (false, Cow::Borrowed(b)),
            HashKey::Str(s) => match latin1(s) {
                Some(bytes) => (false, Cow::Owned(bytes)),
                None => (true, Cow::Borrowed(s.as_bytes())),
            },
        }
    }
}

impl From<&str> for HashKey {
    /// A byte key when `s` is ASCII (as a Perl source literal would be), else a character key.
    fn from(s: &str) -> HashKey {
        if s.is_ascii() {
            HashKey::Bytes(s.as_bytes().to_vec())
        } else {
            HashKey::Str(s.to_owned())
        }
    }
}

/// `s` as Latin-1 bytes, if every character is below 256.
pub(crate) fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// Bytes as text: UTF-8 when valid, otherwise Latin-1.
pub(crate) fn bytes_as_text(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(b.iter().map(|&c| char::from(c)).collect()),
    }
}

/// A Perl data structure: every value (SV) of it, and the root.
///
/// The root is what Storable froze: `freeze(\%h)` has the hash as its root and `thaw` returns a
/// reference to it; Cache::FastMmap freezes `\$value`, so for a cache value the root is the
/// cached scalar itself (a [`PerlValue::Ref`] when a reference was cached).
///
/// Values refer to each other by [`SvId`], so the structure is a graph, as in Perl: two
/// references to the same array share its id, an array may hold the same scalar twice, and
/// cycles (`$h->{self} = $h`) are possible. Freezing a `PerlData` writes every shared value
/// once and Storable back-references for the rest, exactly as Perl would; equality
/// (`==`) compares the structures reachable from the roots, sharing included, and ignores
/// values that cannot be reached. Nothing here recurses, so depth costs no stack.
///
/// ```
/// use fastmmap::perl::{PerlData, PerlRef, PerlValue};
///
/// // my $shared = [1]; my $root = { a => $shared, b => $shared };
/// let mut data = PerlData::new(PerlValue::Undef);
/// let one = data.push(PerlValue::Int(1));
/// let shared = data.push(PerlValue::Array(vec![one]));
/// let a = data.push(PerlValue::Ref(PerlRef::to(shared)));
/// let b = data.push(PerlValue::Ref(PerlRef::to(shared)));
/// let root = data.push(PerlValue::Hash(vec![("a".into(), a), ("b".into(), b)]));
/// data.set_root(root);
///
/// let image = fastmmap::perl::storable::freeze(&data)?;
/// let back = fastmmap::perl::storable::thaw(&image)?;
/// assert_eq!(back, data);
/// # Ok::<(), fastmmap::perl::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PerlData {
    svs: Vec<Sv>,
    root: SvId,
}

impl PerlData {
    /// A structure of one value, which is its root. Add more with [`push`](Self::push) and
    /// [`set_root`](Self::set_root).
    pub fn new(root: impl Into<Sv>) -> PerlData {
        PerlData {
            svs: vec![root.into()],
            root: SvId(0),
        }
    }

    /// Built by the decoder and the serializer, which keep the ids valid.
    pub(crate) fn from_parts(svs: Vec<Sv>, root: SvId) -> PerlData {
        debug_assert!(root.index() < svs.len());
        PerlData { svs, root }
    }

    /// Adds a value (not yet reachable from the root) and returns its id.
    ///
    /// # Panics
    /// If the structure already holds 2³² values.
    pub fn push(&mut self, value: impl Into<Sv>) -> SvId {
        let id = SvId::from_index(self.svs.len()).expect("at most 2^32 values in one PerlData");
        self.svs.push(value.into());
        id
    }

    /// The root's id.
    pub fn root(&self) -> SvId {
        self.root
    }

    /// Makes `id` the root.
    ///
    /// # Panics
    /// If `id` is not a value of this structure.
    pub fn set_root(&mut self, id: SvId) {
        assert!(
            id.index() < self.svs.len(),
            "{id:?} is not in this PerlData"
        );
        self.root = id;
    }

    /// The value with id `id`, if this structure has it.
    pub fn get(&self, id: SvId) -> Option<&Sv> {
        self.svs.get(id.index())
    }

    /// The value with id `id`, to change it.
    pub fn get_mut(&mut self, id: SvId) -> Option<&mut Sv> {
        self.svs.get_mut(id.index())
    }

    /// Every value with its id, reachable from the root or not, in order of creation.
    pub fn svs(&self) -> impl ExactSizeIterator<Item = (SvId, &Sv)> {
        self.svs
            .iter()
            .enumerate()
            .map(|(i, sv)| (SvId(i as u32), sv))
    }

    /// Follows references from `id` to the first value that is not a reference (as Perl's
    /// dereference does, once per level). `None` if `id` is not in this structure or the
    /// references go round in a circle (`$x = \$x`).
    pub fn deref(&self, id: SvId) -> Option<SvId> {
        let mut id = id;
        for _ in 0..=self.svs.len() {
            match &self.get(id)?.value {
                PerlValue::Ref(r) => id = r.target,
                _ => return Some(id),
            }
        }
        None
    }

    /// Adds every value of `other` (its ids shifted past this structure's) and returns the
    /// new id of its root, which is not yet reachable from this root.
    ///
    /// # Errors
    /// [`Error::TooManyValues`](crate::perl::Error::TooManyValues) if the two together would
    /// hold more than [`MAX_VALUES`](Self::MAX_VALUES) values; this structure is unchanged.
    pub fn append(&mut self, other: PerlData) -> crate::perl::Result<SvId> {
        let offset = appended_offset(self.svs.len(), other.svs.len())?;
        // An id of `other` that names none of its values still names none: the total is
        // below u32::MAX, which no value has.
        let shift = |id: &mut SvId| id.0 = id.0.saturating_add(offset);
        let root = {
            let mut root = other.root;
            shift(&mut root);
            root
        };
        self.svs.reserve(other.svs.len());
        for mut sv in other.svs {
            match &mut sv.value {
                PerlValue::Array(items) => items.iter_mut().for_each(shift),
                PerlValue::Hash(entries) => entries.iter_mut().for_each(|(_, v)| shift(v)),
                PerlValue::Ref(r) => shift(&mut r.target),
                PerlValue::Hook(h) => h.refs.iter_mut().for_each(shift),
                _ => {}
            }
            self.svs.push(sv);
        }
        Ok(root)
    }

    /// The most values [`append`](Self::append) lets one structure reach.
    pub const MAX_VALUES: usize = u32::MAX as usize;

    /// The value of `id` in a hash value (following references to reach the hash), by key
    /// text. `None` if it is not a hash or has no such key.
    pub fn hash_get(&self, id: SvId, key: &str) -> Option<SvId> {
        let PerlValue::Hash(entries) = &self.get(self.deref(id)?)?.value else {
            return None;
        };
        entries
            .iter()
            .find(|(k, _)| k.text() == key)
            .map(|&(_, v)| v)
    }
}

/// Where the ids of `added` values appended to `len` values start, if the two fit together
/// (at most [`PerlData::MAX_VALUES`]).
fn appended_offset(len: usize, added: usize) -> crate::perl::Result<u32> {
    match len.checked_add(added) {
        Some(total) if total <= PerlData::MAX_VALUES => Ok(len as u32),
        _ => Err(crate::perl::Error::TooManyValues {
            limit: PerlData::MAX_VALUES,
        }),
    }
}

impl Index<SvId> for PerlData {
    type Output = Sv;

    /// # Panics
    /// If `id` is not a value of this structure.
    fn index(&self, id: SvId) -> &Sv {
        &self.svs[id.index()]
    }
}

impl PartialEq for PerlData {
    /// Same structure from the roots: same values and classes (numbers bit for bit, so a NaN
    /// equals itself), hashes equal as maps, and the same sharing — two places that hold one
    /// value in `self` hold one value in `other`, and the other way round.
    fn eq(&self, other: &PerlData) -> bool {
        let mut a_to_b: HashMap<SvId, SvId> = HashMap::new();
        let mut b_to_a: HashMap<SvId, SvId> = HashMap::new();
        let mut todo = vec![(self.root, other.root)];
        while let Some((a, b)) = todo.pop() {
            match (a_to_b.get(&a), b_to_a.get(&b)) {
                (Some(&mapped), _) if mapped != b => return false,
                (Some(_), _) => continue,
                (None, Some(_)) => return false,
                (None, None) => {}
            }
            a_to_b.insert(a, b);
            b_to_a.insert(b, a);
            let (Some(sa), Some(sb)) = (self.get(a), other.get(b)) else {
                return false;
            };
            if sa.class != sb.class {
                return false;
            }
            use PerlValue::*;
            match (&sa.value, &sb.value) {
                (Undef, Undef) => {}
                (Bool(x), Bool(y)) if x == y => {}
                (Int(x), Int(y)) if x == y => {}
                (Num(x), Num(y)) if x.to_bits() == y.to_bits() => {}
                (Bytes(x), Bytes(y)) if x == y => {}
                (Str(x), Str(y)) if x == y => {}
                (Array(x), Array(y)) if x.len() == y.len() => {
                    todo.extend(x.iter().copied().zip(y.iter().copied()));
                }
                (Hash(x), Hash(y)) if x.len() == y.len() => {
                    let mut x: Vec<_> = x.iter().collect();
                    let mut y: Vec<_> = y.iter().collect();
                    x.sort_by(|p, q| p.0.cmp(&q.0));
                    y.sort_by(|p, q| p.0.cmp(&q.0));
                    for ((kx, vx), (ky, vy)) in x.into_iter().zip(y) {
                        if kx != ky {
                            return false;
                        }
                        todo.push((*vx, *vy));
                    }
                }
                (Ref(x), Ref(y)) if x.weak == y.weak && x.overloaded == y.overloaded => {
                    todo.push((x.target, y.target));
                }
                (Hook(x), Hook(y))
                    if x.kind == y.kind && x.frozen == y.frozen && x.refs.len() == y.refs.len() =>
                {
                    todo.extend(x.refs.iter().copied().zip(y.refs.iter().copied()));
                }
                _ => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_refuses_more_values_than_ids() {
        assert_eq!(appended_offset(3, 4).unwrap(), 3);
        assert_eq!(
            appended_offset(PerlData::MAX_VALUES - 1, 1).unwrap(),
            u32::MAX - 1
        );
        for (len, added) in [(PerlData::MAX_VALUES, 1), (1, usize::MAX)] {
            let e = appended_offset(len, added).unwrap_err();
            assert!(
                matches!(e, crate::perl::Error::TooManyValues { limit } if limit == PerlData::MAX_VALUES),
                "{e}"
            );
        }
    }
}
