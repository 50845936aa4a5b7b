//! Freezing: a [`PerlData`] to a Storable image, as Perl's `freeze` / `nfreeze` would write the
//! same data, without recursion.

use std::collections::{HashMap, HashSet};

use super::image::*;
use crate::perl::number::{nv_as_iv, nv_to_string};
use crate::perl::value::{HashKey, Hook, HookKind, PerlData, PerlValue, SvId, latin1};
use crate::perl::{Error, Result};

/// Freezes `data`; `network` selects `nfreeze`'s format.
pub(crate) fn freeze(data: &PerlData, network: bool) -> Result<Vec<u8>> {
    let mut w = Writer {
        out: Vec::new(),
        network,
    };
    w.header();
    let mut tags: Vec<Option<u32>> = vec![None; data.svs().len()];
    let mut next_tag: u64 = 0;
    let mut classes: HashMap<&str, usize> = HashMap::new();
    let mut todo = vec![Todo::Value(data.root(), Place::Root)];
    while let Some(item) = todo.pop() {
        let (id, place) = match item {
            Todo::Key(key, flagged) => {
                w.key(key, flagged)?;
                continue;
            }
            Todo::Hook { id, next, started } => {
                let Some(PerlValue::Hook(hook)) = data.get(id).map(|sv| &sv.value) else {
                    unreachable!("only hook objects are pushed as Todo::Hook");
                };
                // As Perl: each referred value not stored yet follows a flags byte (the
                // first behind SX_HOOK); then the object itself, once they all have tags.
                let unseen = hook.refs[next..]
                    .iter()
                    .position(|r| tags.get(r.index()).is_some_and(Option::is_none));
                if let Some(skip) = unseen {
                    let at = next + skip;
                    w.hook_flags(hook, started, SHF_NEED_RECURSE);
                    todo.push(Todo::Hook {
                        id,
                        next: at + 1,
                        started: true,
                    });
                    todo.push(Todo::Value(hook.refs[at], Place::RefTarget));
                    continue;
                }
                let class = data[id].class.as_deref().unwrap_or_default();
                let index = classes.get(class).copied();
                if index.is_none() {
                    let known = classes.len();
                    classes.insert(class, known);
                }
                let ref_tags = hook
                    .refs
                    .iter()
                    .map(|r| tags.get(r.index()).copied().flatten())
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| {
                        Error::InvalidData(format!(
                            "hook object {id:?} refers to a value that is not in this PerlData"
                        ))
                    })?;
                w.hook_end(hook, started, class, index, &ref_tags)?;
                continue;
            }
            Todo::Value(id, place) => (id, place),
        };
        let sv = data
            .get(id)
            .ok_or_else(|| Error::InvalidData(format!("{id:?} is not a value of this PerlData")))?;
        if place == Place::Element && sv.value.is_container() {
            return Err(Error::InvalidData(format!(
                "{id:?} is {} stored directly in an array or hash (refer to it with a Ref)",
                sv.value.kind()
            )));
        }
        if let Some(tag) = tags[id.index()] {
            w.back_reference(tag);
            continue;
        }
        // Storable numbers values in the order it writes them.
        tags[id.index()] = u32::try_from(next_tag).ok();
        next_tag += 1;
        if let PerlValue::Hook(_) = &sv.value {
            // Its class is written after the values it refers to (Todo::Hook).
            if sv.class.is_none() {
                return Err(Error::InvalidData(format!(
                    "hook object {id:?} has no class"
                )));
            }
        } else if let Some(class) = &sv.class {
            let known = classes.len();
            match classes.get(&**class) {
                Some(&index) => w.bless_index(index),
                None => {
                    classes.insert(class, known);
                    w.bless_name(class.as_bytes())?;
                }
            }
        }
        match &sv.value {
            PerlValue::Undef => w.mark(SX_UNDEF),
            PerlValue::Bool(true) => w.mark(SX_SV_YES),
            PerlValue::Bool(false) => w.mark(SX_SV_NO),
            PerlValue::Int(n) => w.int(*n),
            PerlValue::Num(x) => w.num(*x),
            PerlValue::Bytes(b) => w.string(b, SX_SCALAR, SX_LSCALAR),
            PerlValue::Str(s) => w.string(s.as_bytes(), SX_UTF8STR, SX_LUTF8STR),
            PerlValue::Array(items) => {
                w.container(SX_ARRAY, None, items.len());
                todo.extend(items.iter().rev().map(|&i| Todo::Value(i, Place::Element)));
            }
            PerlValue::Hash(entries) => {
                // Perl flags the hash when a key was a character string.
                let flagged = entries.iter().any(|(k, _)| matches!(k, HashKey::Str(_)));
                let mut seen = HashSet::with_capacity(entries.len());
                for (key, _) in entries {
                    if !seen.insert(key.perl_identity()) {
                        return Err(Error::InvalidData(format!(
                            "hash {id:?} has the key {:?} twice",
                            key.text()
                        )));
                    }
                }
                if flagged {
                    w.container(SX_FLAG_HASH, Some(0), entries.len());
                } else {
                    w.container(SX_HASH, None, entries.len());
                }
                // Each value is written before its key.
                for (key, value) in entries.iter().rev() {
                    todo.push(Todo::Key(key, flagged));
                    todo.push(Todo::Value(*value, Place::Element));
                }
            }
            PerlValue::Ref(r) => {
                w.mark(match (r.weak, r.overloaded) {
                    (false, false) => SX_REF,
                    (true, false) => SX_WEAKREF,
                    (false, true) => SX_OVERLOAD,
                    (true, true) => SX_WEAKOVERLOAD,
                });
                todo.push(Todo::Value(r.target, Place::RefTarget));
            }
            PerlValue::Hook(_) => todo.push(Todo::Hook {
                id,
                next: 0,
                started: false,
            }),
        }
    }
    Ok(w.out)
}

enum Todo<'a> {
    Value(SvId, Place),
    /// A hook object whose referred values from `next` on may still need storing;
    /// `started`: its `SX_HOOK` marker has been written.
    Hook {
        id: SvId,
        next: usize,
        started: bool,
    },
    /// A hash key, written after its value; `true` in a flagged hash.
    Key(&'a HashKey, bool),
}

/// Where a value is written: arrays and hashes may only be the root or referred to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Root,
    Element,
    RefTarget,
}

struct Writer {
    out: Vec<u8>,
    network: bool,
}

impl Writer {
    fn header(&mut self) {
        let major = BIN_MAJOR << 1;
        if self.network {
            self.out
                .extend_from_slice(&[major | NETORDER_BIT, BIN_WRITE_MINOR]);
            return;
        }
        let byteorder: &[u8] = if cfg!(target_endian = "big") {
            b"87654321"
        } else {
            b"12345678"
        };
        self.out.extend_from_slice(&[major, BIN_WRITE_MINOR]);
        self.out.push(byteorder.len() as u8);
        self.out.extend_from_slice(byteorder);
        self.out.extend_from_slice(&[
            size_of::<std::ffi::c_int>() as u8,
            size_of::<std::ffi::c_long>() as u8,
            size_of::<usize>() as u8,
            NV_SIZE as u8,
        ]);
    }

    fn mark(&mut self, marker: u8) {
        self.out.push(marker);
    }

    /// Storable's `WLEN`: an i32 in the image's order. Callers pass lengths up to `i32::MAX`.
    fn len(&mut self, n: usize) {
        debug_assert!(n <= i32::MAX as usize);
        let n = n as i32;
        if self.network {
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.out.extend_from_slice(&n.to_ne_bytes());
        }
    }

    fn len64(&mut self, n: u64) {
        if self.network {
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.out.extend_from_slice(&n.to_ne_bytes());
        }
    }

    fn back_reference(&mut self, tag: u32) {
        if let Ok(tag) = i32::try_from(tag) {
            self.mark(SX_OBJECT);
            self.out.extend_from_slice(&tag.to_be_bytes());
        } else {
            self.out.extend_from_slice(&[SX_LOBJECT, SX_OBJECT]);
            self.len64(u64::from(tag));
        }
    }

    fn bless_name(&mut self, name: &[u8]) -> Result<()> {
        if name.len() > i32::MAX as usize {
            return Err(Error::InvalidData("a class name over 2 GiB".into()));
        }
        self.mark(SX_BLESS);
        self.short_or_long(name.len());
        self.out.extend_from_slice(name);
        Ok(())
    }

    fn bless_index(&mut self, index: usize) {
        self.mark(SX_IX_BLESS);
        self.short_or_long(index);
    }

    /// A class name length or index (at most `i32::MAX`): one byte up to 127, else 0x80 and
    /// an i32.
    fn short_or_long(&mut self, n: usize) {
        if n <= LG_BLESS {
            self.out.push(n as u8);
        } else {
            self.out.push(LONG_BLESS_FLAG);
            self.len(n);
        }
    }

    /// `SX_HOOK` (unless `started`: written already, with `SX_LOBJECT` before it when the
    /// frozen string is over 2 GiB) and a flags byte: the object's type and `extra`.
    fn hook_flags(&mut self, hook: &Hook, started: bool, extra: u8) {
        if !started {
            if hook.frozen.len() > i32::MAX as usize {
                self.mark(SX_LOBJECT);
            }
            self.mark(SX_HOOK);
        }
        let kind = match hook.kind {
            HookKind::Scalar => SHT_SCALAR,
            HookKind::Array => SHT_ARRAY,
            HookKind::Hash => SHT_HASH,
        };
        self.out.push(kind | extra);
    }

    /// The last part of a hook object, as Perl's `store_hook` writes it: flags, the class
    /// (its `index` in the class table, or its name the first time), the frozen string and
    /// the referred values' object numbers.
    fn hook_end(
        &mut self,
        hook: &Hook,
        started: bool,
        class: &str,
        index: Option<usize>,
        ref_tags: &[u32],
    ) -> Result<()> {
        if class.len() > i32::MAX as usize {
            return Err(Error::InvalidData("a class name over 2 GiB".into()));
        }
        if ref_tags.len() > i32::MAX as usize {
            return Err(Error::InvalidData(
                "a hook object referring to over 2^31 values".into(),
            ));
        }
        let mut flags = 0;
        if index.unwrap_or(class.len()) > LG_SCALAR {
            flags |= SHF_LARGE_CLASSLEN;
        }
        if index.is_some() {
            flags |= SHF_IDX_CLASSNAME;
        }
        if hook.frozen.len() > LG_SCALAR {
            flags |= SHF_LARGE_STRLEN;
        }
        if !ref_tags.is_empty() {
            flags |= SHF_HAS_LIST;
        }
        if ref_tags.len() > LG_SCALAR {
            flags |= SHF_LARGE_LISTLEN;
        }
        self.hook_flags(hook, started, flags);
        let n = index.unwrap_or(class.len());
        if flags & SHF_LARGE_CLASSLEN != 0 {
            self.len(n);
        } else {
            self.out.push(n as u8);
        }
        if index.is_none() {
            self.out.extend_from_slice(class.as_bytes());
        }
        let n = hook.frozen.len();
        if n > i32::MAX as usize {
            self.len64(n as u64);
        } else if flags & SHF_LARGE_STRLEN != 0 {
            self.len(n);
        } else {
            self.out.push(n as u8);
        }
        self.out.extend_from_slice(&hook.frozen);
        if flags & SHF_LARGE_LISTLEN != 0 {
            self.len(ref_tags.len());
        } else if flags & SHF_HAS_LIST != 0 {
            self.out.push(ref_tags.len() as u8);
        }
        for tag in ref_tags {
            self.out.extend_from_slice(&tag.to_be_bytes());
        }
        Ok(())
    }

    /// An integer as Storable writes an IV: a byte if small; else native, or in network
    /// order a big-endian i32 when it fits and its decimal string when it does not.
    fn int(&mut self, n: i64) {
        if (-BYTE_OFFSET..BYTE_OFFSET).contains(&n) {
            self.out
                .extend_from_slice(&[SX_BYTE, (n + BYTE_OFFSET) as u8]);
        } else if !self.network {
            self.mark(SX_INTEGER);
            self.out.extend_from_slice(&n.to_ne_bytes());
        } else if let Ok(n) = i32::try_from(n) {
            self.mark(SX_NETINT);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else {
            self.string(n.to_string().as_bytes(), SX_SCALAR, SX_LSCALAR);
        }
    }

    /// A double: native, or in network order as Perl does — an integer when it is one (below
    /// 2⁵³), else its string (`%.15g`).
    fn num(&mut self, x: f64) {
        if !self.network {
            self.mark(SX_DOUBLE);
            self.out.extend_from_slice(&x.to_ne_bytes());
        } else if let Some(n) = nv_as_iv(x) {
            self.int(n);
        } else {
            self.string(nv_to_string(x).as_bytes(), SX_SCALAR, SX_LSCALAR);
        }
    }

    fn string(&mut self, bytes: &[u8], small: u8, large: u8) {
        if bytes.len() <= LG_SCALAR {
            self.out.extend_from_slice(&[small, bytes.len() as u8]);
        } else if bytes.len() > i32::MAX as usize {
            self.out.extend_from_slice(&[SX_LOBJECT, large]);
            self.len64(bytes.len() as u64);
        } else {
            self.mark(large);
            self.len(bytes.len());
        }
        self.out.extend_from_slice(bytes);
    }

    fn container(&mut self, marker: u8, hash_flags: Option<u8>, n: usize) {
        if n > i32::MAX as usize {
            self.out.extend_from_slice(&[SX_LOBJECT, marker]);
            self.out.extend(hash_flags);
            self.len64(n as u64);
        } else {
            self.mark(marker);
            self.out.extend(hash_flags);
            self.len(n);
        }
    }

    /// A key as Perl stores it: a character key as Latin-1 with `WASUTF8` when it can be, else
    /// as UTF-8 with `UTF8`.
    fn key(&mut self, key: &HashKey, flagged: bool) -> Result<()> {
        let (flags, bytes) = match key {
            HashKey::Bytes(b) => (0, std::borrow::Cow::Borrowed(&b[..])),
            HashKey::Str(s) => match latin1(s) {
                Some(b) => (SHV_K_WASUTF8, b.into()),
                None => (SHV_K_UTF8, s.as_bytes().into()),
            },
        };
        if bytes.len() > i32::MAX as usize {
            return Err(Error::InvalidData("a hash key over 2 GiB".into()));
        }
        if flagged {
            self.out.push(flags);
        }
        self.len(bytes.len());
        self.out.extend_from_slice(&bytes);
        Ok(())
    }
}
