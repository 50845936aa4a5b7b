//! Serde serialization into a [`PerlData`]: every Rust value becomes one Perl scalar —
//! numbers stay numbers, strings strings, `None` and `()` undef, sequences array references,
//! maps and structs hash references.

use serde::ser::{self, Serialize};

use crate::perl::value::{HashKey, PerlData, PerlRef, PerlValue, Sv, SvId};
use crate::perl::{Error, Result};

/// `value` as Perl data whose root is the scalar Perl would hold for it (a struct gives a
/// reference to a hash).
pub(crate) fn to_scalar<T: Serialize + ?Sized>(value: &T) -> Result<PerlData> {
    let mut svs = Vec::new();
    let root = value.serialize(ValueSerializer { svs: &mut svs })?;
    Ok(PerlData::from_parts(svs, root))
}

/// `value` as Perl data whose root is what a reference to it points to: the array or hash
/// itself for sequences, maps and structs (as `freeze(\%h)` has), else the scalar.
pub(crate) fn to_referent<T: Serialize + ?Sized>(value: &T) -> Result<PerlData> {
    let mut svs = Vec::new();
    let mut root = value.serialize(ValueSerializer { svs: &mut svs })?;
    // The serializer makes references only to arrays and hashes, each pushed right after
    // what it refers to: the root's reference is the last value.
    if let Some(Sv {
        value: PerlValue::Ref(r),
        class: None,
    }) = svs.last()
        && root.index() == svs.len() - 1
    {
        root = r.target;
        svs.pop();
    }
    Ok(PerlData::from_parts(svs, root))
}

fn push(svs: &mut Vec<Sv>, value: PerlValue) -> Result<SvId> {
    let id = SvId::from_index(svs.len())
        .ok_or_else(|| Error::Data("more than 2^32 Perl values".into()))?;
    svs.push(Sv::new(value));
    Ok(id)
}

/// A reference to a new array or hash.
fn push_ref(svs: &mut Vec<Sv>, container: PerlValue) -> Result<SvId> {
    let target = push(svs, container)?;
    push(svs, PerlValue::Ref(PerlRef::to(target)))
}

/// A hash reference of one entry, `{ variant => value }` (serde's externally tagged enums).
fn push_variant(svs: &mut Vec<Sv>, variant: &str, value: SvId) -> Result<SvId> {
    push_ref(svs, PerlValue::Hash(vec![(HashKey::from(variant), value)]))
}

/// Serializes one value to one Perl scalar; returns its id.
struct ValueSerializer<'a> {
    svs: &'a mut Vec<Sv>,
}

impl<'a> ser::Serializer for ValueSerializer<'a> {
    type Ok = SvId;
    type Error = Error;
    type SerializeSeq = SeqSerializer<'a>;
    type SerializeTuple = SeqSerializer<'a>;
    type SerializeTupleStruct = SeqSerializer<'a>;
    type SerializeTupleVariant = SeqSerializer<'a>;
    type SerializeMap = MapSerializer<'a>;
    type SerializeStruct = MapSerializer<'a>;
    type SerializeStructVariant = MapSerializer<'a>;

    /// Perl has no booleans of its own: `true` is 1 and `false` is 0.
    fn serialize_bool(self, v: bool) -> Result<SvId> {
        push(self.svs, PerlValue::Int(i64::from(v)))
    }

    fn serialize_i8(self, v: i8) -> Result<SvId> {
        self.serialize_i64(v.into())
    }

    fn serialize_i16(self, v: i16) -> Result<SvId> {
        self.serialize_i64(v.into())
    }

    fn serialize_i32(self, v: i32) -> Result<SvId> {
        self.serialize_i64(v.into())
    }

    fn serialize_i64(self, v: i64) -> Result<SvId> {
        push(self.svs, PerlValue::Int(v))
    }

    fn serialize_u8(self, v: u8) -> Result<SvId> {
        self.serialize_i64(v.into())
    }

    fn serialize_u16(self, v: u16) -> Result<SvId> {
        self.serialize_i64(v.into())
    }

    fn serialize_u32(self, v: u32) -> Result<SvId> {
        self.serialize_i64(v.into())
    }

    /// Above `i64::MAX`, its decimal string, as Storable writes such a Perl UV.
    fn serialize_u64(self, v: u64) -> Result<SvId> {
        match i64::try_from(v) {
            Ok(v) => self.serialize_i64(v),
            Err(_) => push(self.svs, PerlValue::Bytes(v.to_string().into_bytes())),
        }
    }

    fn serialize_f32(self, v: f32) -> Result<SvId> {
        self.serialize_f64(v.into())
    }

    fn serialize_f64(self, v: f64) -> Result<SvId> {
        push(self.svs, PerlValue::Num(v))
    }

    fn serialize_char(self, v: char) -> Result<SvId> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> Result<SvId> {
        push(self.svs, PerlValue::string(v))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<SvId> {
        push(self.svs, PerlValue::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> Result<SvId> {
        push(self.svs, PerlValue::Undef)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<SvId> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<SvId> {
        push(self.svs, PerlValue::Undef)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<SvId> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<SvId> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<SvId> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<SvId> {
        let inner = value.serialize(ValueSerializer {
            svs: &mut *self.svs,
        })?;
        push_variant(self.svs, variant, inner)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSerializer<'a>> {
        Ok(SeqSerializer {
            svs: self.svs,
            items: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            variant: None,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<SeqSerializer<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SeqSerializer<'a>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqSerializer<'a>> {
        let mut seq = self.serialize_seq(Some(len))?;
        seq.variant = Some(variant);
        Ok(seq)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<MapSerializer<'a>> {
        Ok(MapSerializer {
            svs: self.svs,
            entries: Vec::with_capacity(len.unwrap_or(0).min(4096)),
            key: None,
            variant: None,
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapSerializer<'a>> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapSerializer<'a>> {
        let mut map = self.serialize_map(Some(len))?;
        map.variant = Some(variant);
        Ok(map)
    }
}

/// Collects the elements of an array reference.
struct SeqSerializer<'a> {
    svs: &'a mut Vec<Sv>,
    items: Vec<SvId>,
    /// For a tuple variant: `{ variant => [...] }`.
    variant: Option<&'static str>,
}

impl SeqSerializer<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let id = value.serialize(ValueSerializer {
            svs: &mut *self.svs,
        })?;
        self.items.push(id);
        Ok(())
    }

    fn finish(self) -> Result<SvId> {
        let array = push_ref(self.svs, PerlValue::Array(self.items))?;
        match self.variant {
            Some(variant) => push_variant(self.svs, variant, array),
            None => Ok(array),
        }
    }
}

/// serde's four sequence traits, alike here: each element or field is `element`, the end
/// `finish`.
macro_rules! seq_traits {
    ($($name:ident: $method:ident),*) => {$(
        impl ser::$name for SeqSerializer<'_> {
            type Ok = SvId;
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
                self.element(value)
            }

            fn end(self) -> Result<SvId> {
                self.finish()
            }
        }
    )*};
}

seq_traits!(
    SerializeSeq: serialize_element,
    SerializeTuple: serialize_element,
    SerializeTupleStruct: serialize_field,
    SerializeTupleVariant: serialize_field
);

/// Collects the entries of a hash reference.
struct MapSerializer<'a> {
    svs: &'a mut Vec<Sv>,
    entries: Vec<(HashKey, SvId)>,
    /// The key given by `serialize_key`, waiting for its value.
    key: Option<HashKey>,
    /// For a struct variant: `{ variant => {...} }`.
    variant: Option<&'static str>,
}

impl MapSerializer<'_> {
    /// (A key given twice is refused when the data are frozen.)
    fn entry<T: Serialize + ?Sized>(&mut self, key: HashKey, value: &T) -> Result<()> {
        let id = value.serialize(ValueSerializer {
            svs: &mut *self.svs,
        })?;
        self.entries.push((key, id));
        Ok(())
    }

    fn finish(self) -> Result<SvId> {
        let hash = push_ref(self.svs, PerlValue::Hash(self.entries))?;
        match self.variant {
            Some(variant) => push_variant(self.svs, variant, hash),
            None => Ok(hash),
        }
    }
}

impl ser::SerializeMap for MapSerializer<'_> {
    type Ok = SvId;
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        self.key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let key = self
            .key
            .take()
            .ok_or_else(|| Error::Data("a map value without a key".into()))?;
        self.entry(key, value)
    }

    fn end(self) -> Result<SvId> {
        self.finish()
    }
}

/// serde's two struct traits, alike here: each field is an `entry` under its name.
macro_rules! struct_traits {
    ($($name:ident),*) => {$(
        impl ser::$name for MapSerializer<'_> {
            type Ok = SvId;
            type Error = Error;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<()> {
                self.entry(HashKey::from(key), value)
            }

            fn end(self) -> Result<SvId> {
                self.finish()
            }
        }
    )*};
}

struct_traits!(SerializeStruct, SerializeStructVariant);

/// Map keys: Perl's hash keys are strings, so strings, bytes, chars, integers and unit
/// variants are accepted (integers as their decimal strings, as serde_json does).
struct KeySerializer;

fn key_error() -> Error {
    Error::Data("a map key must be a string, bytes, a char, an integer or a unit variant".into())
}

macro_rules! integer_keys {
    ($($method:ident: $t:ty),*) => {$(
        fn $method(self, v: $t) -> Result<HashKey> {
            Ok(HashKey::Bytes(v.to_string().into_bytes()))
        }
    )*};
}

impl ser::Serializer for KeySerializer {
    type Ok = HashKey;
    type Error = Error;
    type SerializeSeq = ser::Impossible<HashKey, Error>;
    type SerializeTuple = ser::Impossible<HashKey, Error>;
    type SerializeTupleStruct = ser::Impossible<HashKey, Error>;
    type SerializeTupleVariant = ser::Impossible<HashKey, Error>;
    type SerializeMap = ser::Impossible<HashKey, Error>;
    type SerializeStruct = ser::Impossible<HashKey, Error>;
    type SerializeStructVariant = ser::Impossible<HashKey, Error>;

    integer_keys!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_u8: u8, serialize_u16: u16, serialize_u32: u32, serialize_u64: u64
    );

    fn serialize_bool(self, _v: bool) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_f32(self, _v: f32) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_f64(self, _v: f64) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_char(self, v: char) -> Result<HashKey> {
        Ok(HashKey::from(&*v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<HashKey> {
        Ok(HashKey::from(v))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<HashKey> {
        Ok(HashKey::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_unit(self) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<HashKey> {
        Ok(HashKey::from(variant))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<HashKey> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<HashKey> {
        Err(key_error())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(key_error())
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple> {
        Err(key_error())
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(key_error())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(key_error())
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap> {
        Err(key_error())
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct> {
        Err(key_error())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(key_error())
    }
}
