//! Serde deserialization from a [`PerlData`].
//!
//! Perl's scalars are untyped, so scalars convert as Perl would convert them: a string that
//! holds a number deserializes as that number (`nfreeze` stores doubles as strings), a number
//! as its string, and `bool` follows Perl's truth (`undef`, `""`, `"0"` and 0 are false).
//! References are transparent: a hash reference, a reference to a reference to a hash and a
//! blessed hash all deserialize as the hash. An object frozen by a `STORABLE_freeze` hook
//! deserializes as the map `{ class, frozen }`: its class and the string its hook returned
//! (the values the hook referred to are left out: they often refer back to the object; read
//! them from the [`PerlData`]). Shared values are copied to each place that uses
//! them; cycles, nesting deeper than [`MAX_DEPTH`] and copying more than the expansion limits
//! (values, and bytes of strings and keys) are errors.

use std::borrow::Cow;

use serde::de::{
    self, DeserializeSeed, EnumAccess, Error as _, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

use crate::perl::number::{nv_as_iv, nv_to_string, parse_f64, parse_i64, parse_u64};
use crate::perl::value::{HashKey, Hook, PerlData, PerlValue, SvId, bytes_as_text};
use crate::perl::{Error, Result};

/// Arrays, hashes and enum wrappers nested deeper than this are refused (as serde_json
/// refuses deeper JSON): deserializing recurses once per level.
pub(crate) const MAX_DEPTH: usize = 128;

/// Values that may be visited in one deserialization: this many, plus
/// [`EXPANSION_FACTOR`] per value of the data.
const EXPANSION_FLOOR: usize = 1 << 20;
/// Bytes of strings and hash keys that may be handed to the visitors in one deserialization:
/// this many, plus [`EXPANSION_FACTOR`] per byte of the data's strings and keys.
const EXPANSION_FLOOR_BYTES: usize = 1 << 24;
/// See [`EXPANSION_FLOOR`] and [`EXPANSION_FLOOR_BYTES`].
const EXPANSION_FACTOR: usize = 16;

/// Deserializes a `T` from the root of `data`.
pub(crate) fn from_data<'de, T: de::Deserialize<'de>>(data: &'de PerlData) -> Result<T> {
    let count = data.svs().len();
    let text_bytes: usize = data
        .svs()
        .map(|(_, sv)| match &sv.value {
            PerlValue::Bytes(b) => b.len(),
            PerlValue::Str(s) => s.len(),
            PerlValue::Hash(entries) => entries.iter().map(|(k, _)| key_len(k)).sum(),
            _ => 0,
        })
        .sum();
    let mut state = State {
        depth: 0,
        visits: 0,
        visit_limit: EXPANSION_FLOOR.saturating_add(count.saturating_mul(EXPANSION_FACTOR)),
        bytes: 0,
        byte_limit: EXPANSION_FLOOR_BYTES
            .saturating_add(text_bytes.saturating_mul(EXPANSION_FACTOR)),
        open: vec![false; count],
    };
    T::deserialize(ValueDe {
        data,
        id: data.root(),
        state: &mut state,
    })
}

struct State {
    depth: usize,
    visits: usize,
    visit_limit: usize,
    bytes: usize,
    byte_limit: usize,
    /// Containers being deserialized now: meeting one again is a cycle.
    open: Vec<bool>,
}

impl State {
    /// Counts one value, and the bytes of its text, against the expansion limits.
    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.visits += 1;
        if self.visits > self.visit_limit {
            return Err(Error::TooLarge {
                limit: self.visit_limit,
                unit: "values",
            });
        }
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.byte_limit {
            return Err(Error::TooLarge {
                limit: self.byte_limit,
                unit: "bytes of strings",
            });
        }
        Ok(())
    }
}

fn key_len(key: &HashKey) -> usize {
    match key {
        HashKey::Bytes(b) => b.len(),
        HashKey::Str(s) => s.len(),
    }
}

/// A scalar's content.
#[derive(Clone, Copy)]
enum Scalar<'de> {
    Undef,
    Bool(bool),
    Int(i64),
    Num(f64),
    Bytes(&'de [u8]),
    Str(&'de str),
}

/// What a value is, once references are followed.
enum Node<'de> {
    Scalar(Scalar<'de>),
    Array(SvId, &'de [SvId]),
    Hash(SvId, &'de [(HashKey, SvId)]),
    /// A hook object and its class.
    Hook(&'de str, &'de Hook),
}

impl Node<'_> {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Node::Scalar(s) => s.unexpected(),
            Node::Array(..) => Unexpected::Seq,
            Node::Hash(..) | Node::Hook(..) => Unexpected::Map,
        }
    }
}

impl<'de> Scalar<'de> {
    fn unexpected(&self) -> Unexpected<'de> {
        match *self {
            Scalar::Undef => Unexpected::Unit,
            Scalar::Bool(b) => Unexpected::Bool(b),
            Scalar::Int(n) => Unexpected::Signed(n),
            Scalar::Num(x) => Unexpected::Float(x),
            Scalar::Bytes(b) => Unexpected::Bytes(b),
            Scalar::Str(s) => Unexpected::Str(s),
        }
    }

    /// The string Perl would see, for strings and numbers.
    fn text(&self) -> Option<Cow<'de, str>> {
        match *self {
            Scalar::Str(s) => Some(Cow::Borrowed(s)),
            Scalar::Bytes(b) => Some(bytes_as_text(b)),
            Scalar::Int(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Num(x) => Some(Cow::Owned(nv_to_string(x))),
            Scalar::Bool(b) => Some(Cow::Borrowed(if b { "1" } else { "" })),
            Scalar::Undef => None,
        }
    }

    /// The string of a string scalar (not of a number).
    fn string(&self) -> Option<Cow<'de, str>> {
        match self {
            Scalar::Str(_) | Scalar::Bytes(_) => self.text(),
            _ => None,
        }
    }

    fn any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Scalar::Undef => visitor.visit_unit(),
            Scalar::Bool(b) => visitor.visit_bool(b),
            Scalar::Int(n) => visitor.visit_i64(n),
            Scalar::Num(x) => visitor.visit_f64(x),
            Scalar::Str(s) => visitor.visit_borrowed_str(s),
            Scalar::Bytes(b) => match bytes_as_text(b) {
                Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
                Cow::Owned(s) => visitor.visit_string(s),
            },
        }
    }

    /// Perl's truth.
    fn truth<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let truth = match self {
            Scalar::Undef => false,
            Scalar::Bool(b) => b,
            Scalar::Int(n) => n != 0,
            Scalar::Num(x) => x != 0.0,
            Scalar::Bytes(b) => !(b.is_empty() || b == b"0"),
            Scalar::Str(s) => !(s.is_empty() || s == "0"),
        };
        visitor.visit_bool(truth)
    }

    fn integer<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Scalar::Int(n) => visitor.visit_i64(n),
            Scalar::Bool(b) => visitor.visit_i64(i64::from(b)),
            Scalar::Num(x) => match nv_as_iv(x) {
                Some(n) => visitor.visit_i64(n),
                None => visitor.visit_f64(x),
            },
            Scalar::Bytes(_) | Scalar::Str(_) => {
                let text = self.text().unwrap_or_default();
                if let Some(n) = parse_i64(&text) {
                    visitor.visit_i64(n)
                } else if let Some(n) = parse_u64(&text) {
                    visitor.visit_u64(n)
                } else {
                    Err(Error::invalid_type(self.unexpected(), &visitor))
                }
            }
            Scalar::Undef => Err(Error::invalid_type(self.unexpected(), &visitor)),
        }
    }

    fn float<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Scalar::Num(x) => visitor.visit_f64(x),
            Scalar::Int(n) => visitor.visit_f64(n as f64),
            Scalar::Bool(b) => visitor.visit_f64(if b { 1.0 } else { 0.0 }),
            Scalar::Bytes(_) | Scalar::Str(_) => {
                match parse_f64(&self.text().unwrap_or_default()) {
                    Some(x) => visitor.visit_f64(x),
                    None => Err(Error::invalid_type(self.unexpected(), &visitor)),
                }
            }
            Scalar::Undef => Err(Error::invalid_type(self.unexpected(), &visitor)),
        }
    }

    fn str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.text() {
            Some(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            Some(Cow::Owned(s)) => visitor.visit_string(s),
            None => Err(Error::invalid_type(self.unexpected(), &visitor)),
        }
    }

    fn bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Scalar::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Scalar::Str(s) => visitor.visit_borrowed_bytes(s.as_bytes()),
            _ => match self.text() {
                Some(text) => visitor.visit_byte_buf(text.into_owned().into_bytes()),
                None => Err(Error::invalid_type(self.unexpected(), &visitor)),
            },
        }
    }

    fn unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self {
            Scalar::Undef => visitor.visit_unit(),
            _ => Err(Error::invalid_type(self.unexpected(), &visitor)),
        }
    }
}

/// Deserializes one value of the data.
struct ValueDe<'de, 's> {
    data: &'de PerlData,
    id: SvId,
    state: &'s mut State,
}

impl<'de> ValueDe<'de, '_> {
    /// Follows references to the value itself, counting the visit.
    fn node(&mut self) -> Result<Node<'de>> {
        let data: &'de PerlData = self.data;
        // Each reference followed is charged: many uses of one long chain cost their length.
        let mut id = self.id;
        let mut steps = 0;
        while let PerlValue::Ref(r) = &data[id].value {
            steps += 1;
            if steps > self.state.open.len() {
                return Err(Error::Cyclic);
            }
            self.state.charge(0)?;
            id = r.target;
        }
        self.state.charge(match &data[id].value {
            PerlValue::Bytes(b) => b.len(),
            PerlValue::Str(s) => s.len(),
            PerlValue::Hook(h) => h.frozen.len(),
            _ => 0,
        })?;
        Ok(match &data[id].value {
            PerlValue::Undef => Node::Scalar(Scalar::Undef),
            PerlValue::Bool(b) => Node::Scalar(Scalar::Bool(*b)),
            PerlValue::Int(n) => Node::Scalar(Scalar::Int(*n)),
            PerlValue::Num(x) => Node::Scalar(Scalar::Num(*x)),
            PerlValue::Bytes(b) => Node::Scalar(Scalar::Bytes(b)),
            PerlValue::Str(s) => Node::Scalar(Scalar::Str(s)),
            PerlValue::Array(items) => Node::Array(id, items),
            PerlValue::Hash(entries) => Node::Hash(id, entries),
            PerlValue::Hook(h) => Node::Hook(data[id].class.as_deref().unwrap_or(""), h),
            PerlValue::Ref(_) => unreachable!("the loop above follows every reference"),
        })
    }

    /// A scalar, or an error naming what the value is instead.
    fn scalar<V: Visitor<'de>>(&mut self, visitor: &V) -> Result<Scalar<'de>> {
        match self.node()? {
            Node::Scalar(s) => Ok(s),
            other => Err(Error::invalid_type(other.unexpected(), visitor)),
        }
    }

    /// Runs `f` inside container `id`: refuses cycles and excessive depth.
    fn inside<R>(
        &mut self,
        id: SvId,
        f: impl FnOnce(&'de PerlData, &mut State) -> Result<R>,
    ) -> Result<R> {
        let state = &mut *self.state;
        if state.open[id.index()] {
            return Err(Error::Cyclic);
        }
        if state.depth >= MAX_DEPTH {
            return Err(Error::TooDeep { limit: MAX_DEPTH });
        }
        state.open[id.index()] = true;
        state.depth += 1;
        let result = f(self.data, state);
        state.depth -= 1;
        state.open[id.index()] = false;
        result
    }

    fn seq<V: Visitor<'de>>(
        &mut self,
        id: SvId,
        items: &'de [SvId],
        visitor: V,
    ) -> Result<V::Value> {
        self.inside(id, |data, state| {
            let mut seq = Seq {
                data,
                items: items.iter(),
                state,
            };
            let value = visitor.visit_seq(&mut seq)?;
            all_read(value, items.len(), seq.items.len())
        })
    }

    /// A hook object as a map: its parts are a string and bytes, nothing to recurse into.
    fn hook<V: Visitor<'de>>(class: &'de str, hook: &'de Hook, visitor: V) -> Result<V::Value> {
        visitor.visit_map(HookMap {
            class,
            hook,
            next: 0,
        })
    }

    fn map<V: Visitor<'de>>(
        &mut self,
        id: SvId,
        entries: &'de [(HashKey, SvId)],
        visitor: V,
    ) -> Result<V::Value> {
        self.inside(id, |data, state| {
            let mut map = Map {
                data,
                entries: entries.iter(),
                value: None,
                state,
            };
            let value = visitor.visit_map(&mut map)?;
            all_read(value, entries.len(), map.entries.len())
        })
    }
}

/// `value`, if the visitor read every one of a container's `total` elements; an error if it
/// left `left` of them unread.
fn all_read<T>(value: T, total: usize, left: usize) -> Result<T> {
    match left {
        0 => Ok(value),
        left => Err(Error::invalid_length(total, &ExpectedFewer(left))),
    }
}

/// For the error of a visitor that left elements unread.
struct ExpectedFewer(usize);

impl de::Expected for ExpectedFewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fewer elements", self.0)
    }
}

macro_rules! scalar_methods {
    ($($method:ident => $how:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
            let scalar = self.scalar(&visitor)?;
            scalar.$how(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueDe<'de, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.node()? {
            Node::Scalar(s) => s.any(visitor),
            Node::Array(id, items) => self.seq(id, items, visitor),
            Node::Hash(id, entries) => self.map(id, entries, visitor),
            Node::Hook(class, hook) => Self::hook(class, hook, visitor),
        }
    }

    scalar_methods! {
        deserialize_bool => truth,
        deserialize_i8 => integer, deserialize_i16 => integer, deserialize_i32 => integer,
        deserialize_i64 => integer, deserialize_i128 => integer,
        deserialize_u8 => integer, deserialize_u16 => integer, deserialize_u32 => integer,
        deserialize_u64 => integer, deserialize_u128 => integer,
        deserialize_f32 => float, deserialize_f64 => float,
        deserialize_char => str, deserialize_str => str, deserialize_string => str,
        deserialize_identifier => str,
        deserialize_bytes => bytes, deserialize_byte_buf => bytes,
        deserialize_unit => unit,
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.node()? {
            Node::Scalar(Scalar::Undef) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.node()? {
            Node::Array(id, items) => self.seq(id, items, visitor),
            other => Err(Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.node()? {
            Node::Hash(id, entries) => self.map(id, entries, visitor),
            Node::Hook(class, hook) => Self::hook(class, hook, visitor),
            other => Err(Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    /// A hash, or an array of the fields in order (as serde_json allows).
    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.node()? {
            Node::Hash(id, entries) => self.map(id, entries, visitor),
            Node::Hook(class, hook) => Self::hook(class, hook, visitor),
            Node::Array(id, items) => self.seq(id, items, visitor),
            other => Err(Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    /// A unit variant is its name; any other variant a hash of one entry, `{ name => value }`.
    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.node()? {
            Node::Scalar(s) => match s.string() {
                Some(name) => visitor.visit_enum(UnitVariant(name)),
                None => Err(Error::invalid_type(s.unexpected(), &visitor)),
            },
            Node::Hash(id, [(key, value)]) => self.inside(id, |data, state| {
                visitor.visit_enum(Variant {
                    data,
                    key,
                    value: *value,
                    state,
                })
            }),
            other => Err(Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }
}

struct Seq<'de, 's> {
    data: &'de PerlData,
    items: std::slice::Iter<'de, SvId>,
    state: &'s mut State,
}

impl<'de> SeqAccess<'de> for Seq<'de, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        let Some(&id) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(ValueDe {
            data: self.data,
            id,
            state: &mut *self.state,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'de, 's> {
    data: &'de PerlData,
    entries: std::slice::Iter<'de, (HashKey, SvId)>,
    /// The value of the key just read.
    value: Option<SvId>,
    state: &'s mut State,
}

impl<'de> MapAccess<'de> for Map<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.state.charge(key_len(key))?;
        self.value = Some(*value);
        seed.deserialize(KeyDe(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let id = self
            .value
            .take()
            .ok_or_else(|| Error::Data("a map value asked for before its key".into()))?;
        seed.deserialize(ValueDe {
            data: self.data,
            id,
            state: &mut *self.state,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// The names of a hook object's parts, as a map.
const HOOK_FIELDS: [&str; 2] = ["class", "frozen"];

/// A hook object as the map `{ class, frozen }`.
struct HookMap<'de> {
    class: &'de str,
    hook: &'de Hook,
    /// The index in [`HOOK_FIELDS`] of the next key.
    next: usize,
}

impl<'de> MapAccess<'de> for HookMap<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        let Some(&name) = HOOK_FIELDS.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        match self.next {
            1 => seed.deserialize(de::value::BorrowedStrDeserializer::new(self.class)),
            2 => match bytes_as_text(&self.hook.frozen) {
                Cow::Borrowed(s) => seed.deserialize(de::value::BorrowedStrDeserializer::new(s)),
                Cow::Owned(s) => seed.deserialize(de::value::StringDeserializer::new(s)),
            },
            _ => Err(Error::Data("a map value asked for before its key".into())),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(HOOK_FIELDS.len() - self.next)
    }
}

/// A hash key: a string, which deserializes as a number too (`HashMap<u32, _>`).
struct KeyDe<'de>(&'de HashKey);

impl<'de> KeyDe<'de> {
    fn scalar(&self) -> Scalar<'de> {
        match self.0 {
            HashKey::Bytes(b) => Scalar::Bytes(b),
            HashKey::Str(s) => Scalar::Str(s),
        }
    }
}

macro_rules! key_methods {
    ($($method:ident => $how:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.scalar().$how(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for KeyDe<'de> {
    type Error = Error;

    key_methods! {
        deserialize_any => any,
        deserialize_bool => truth,
        deserialize_i8 => integer, deserialize_i16 => integer, deserialize_i32 => integer,
        deserialize_i64 => integer, deserialize_i128 => integer,
        deserialize_u8 => integer, deserialize_u16 => integer, deserialize_u32 => integer,
        deserialize_u64 => integer, deserialize_u128 => integer,
        deserialize_f32 => float, deserialize_f64 => float,
        deserialize_char => str, deserialize_str => str, deserialize_string => str,
        deserialize_identifier => str,
        deserialize_bytes => bytes, deserialize_byte_buf => bytes,
        deserialize_unit => unit,
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(UnitVariant(self.0.text()))
    }

    serde::forward_to_deserialize_any! {
        unit_struct seq tuple tuple_struct map struct ignored_any
    }
}

/// An enum given by its variant name alone.
struct UnitVariant<'de>(Cow<'de, str>);

impl<'de> EnumAccess<'de> for UnitVariant<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let name: de::value::CowStrDeserializer<'de, Error> = self.0.clone().into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de> VariantAccess<'de> for UnitVariant<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value> {
        Err(Error::invalid_type(
            Unexpected::UnitVariant,
            &"newtype variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value> {
        Err(Error::invalid_type(
            Unexpected::UnitVariant,
            &"tuple variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value> {
        Err(Error::invalid_type(
            Unexpected::UnitVariant,
            &"struct variant",
        ))
    }
}

/// An enum as `{ name => value }`.
struct Variant<'de, 's> {
    data: &'de PerlData,
    key: &'de HashKey,
    value: SvId,
    state: &'s mut State,
}

impl<'de, 's> Variant<'de, 's> {
    fn value(self) -> ValueDe<'de, 's> {
        ValueDe {
            data: self.data,
            id: self.value,
            state: self.state,
        }
    }
}

impl<'de, 's> EnumAccess<'de> for Variant<'de, 's> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        Ok((seed.deserialize(KeyDe(self.key))?, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        de::Deserialize::deserialize(self.value())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self.value())
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_seq(self.value(), visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_struct(self.value(), "", fields, visitor)
    }
}
