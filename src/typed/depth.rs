//! A nesting limit for a serde deserializer that has none of its own (postcard): the value
//! is refused once it is nested more than [`MAX_DEPTH`] containers deep, before the call
//! stack runs out. Without it a recursive type (`struct Comment { children: Vec<Comment> }`)
//! decoded from bytes another process planted aborted the process: one byte a level, and a
//! 20,000-byte value overflowed a 2 MiB thread stack.
//!
//! [`Limited`] wraps the deserializer, and every visitor, access and seed it hands on, each
//! carrying the depth; entering a sequence, map, enum, option or newtype adds one.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Containers a value may be nested in, as serde_json's default and the Perl decoder's.
pub(crate) const MAX_DEPTH: usize = 128;

thread_local! {
    /// Whether a [`Limited`] deserialization on this thread stopped at the limit (a format
    /// may replace the error's message with one of its own, as postcard does).
    static EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a deserialization through [`Limited`], and says whether it stopped at the limit.
pub(crate) fn watch<R>(f: impl FnOnce() -> R) -> (R, bool) {
    EXCEEDED.set(false);
    let result = f();
    (result, EXCEEDED.replace(false))
}

/// The message of a value refused for its depth.
pub(crate) fn too_deep() -> String {
    format!("the value is nested more than {MAX_DEPTH} levels deep")
}

/// `inner`, at `depth` containers deep.
pub(crate) struct Limited<D> {
    inner: D,
    depth: usize,
}

impl<D> Limited<D> {
    /// `inner` at the top level.
    pub(crate) fn new(inner: D) -> Limited<D> {
        Limited { inner, depth: 0 }
    }
}

/// A visitor at `depth`.
struct Wrap<V> {
    visitor: V,
    depth: usize,
}

impl<V> Wrap<V> {
    /// The depth of what this visitor's container holds, or the error past the limit.
    fn inside<E: de::Error>(&self) -> Result<usize, E> {
        if self.depth >= MAX_DEPTH {
            EXCEEDED.set(true);
            return Err(E::custom(too_deep()));
        }
        Ok(self.depth + 1)
    }
}

/// A seed whose value is deserialized at `depth`.
struct Seed<S> {
    seed: S,
    depth: usize,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Limited {
            inner: d,
            depth: self.depth,
        })
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(
                self,
                $($arg: $ty,)*
                visitor: V,
            ) -> Result<V::Value, Self::Error> {
                let depth = self.depth;
                self.inner.$method($($arg,)* Wrap { visitor, depth })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
                self.visitor.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let depth = self.inside()?;
        self.visitor.visit_some(Limited { inner: d, depth })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let depth = self.inside()?;
        self.visitor
            .visit_newtype_struct(Limited { inner: d, depth })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let depth = self.inside()?;
        self.visitor.visit_seq(Access { inner: seq, depth })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let depth = self.inside()?;
        self.visitor.visit_map(Access { inner: map, depth })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let depth = self.inside()?;
        self.visitor.visit_enum(Access { inner: data, depth })
    }
}

/// A sequence, map, enum or variant whose items are at `depth`.
struct Access<A> {
    inner: A,
    depth: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let depth = self.depth;
        self.inner.next_element_seed(Seed { seed, depth })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let depth = self.depth;
        self.inner.next_key_seed(Seed { seed, depth })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let depth = self.depth;
        self.inner.next_value_seed(Seed { seed, depth })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<A> {
    type Error = A::Error;
    type Variant = Access<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Access<A::Variant>), A::Error> {
        let depth = self.depth;
        let (value, variant) = self.inner.variant_seed(Seed { seed, depth })?;
        Ok((
            value,
            Access {
                inner: variant,
                depth,
            },
        ))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        let depth = self.depth;
        self.inner.newtype_variant_seed(Seed { seed, depth })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let depth = self.depth;
        self.inner.tuple_variant(len, Wrap { visitor, depth })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let depth = self.depth;
        self.inner.struct_variant(fields, Wrap { visitor, depth })
    }
}
