//! Thawing: a Storable image to a [`PerlData`], without recursion.
//!
//! Every length in the image is checked against the bytes that remain before anything is
//! allocated for it, so memory stays proportional to the image. Nesting is kept on a heap
//! stack of open arrays, hashes and references, so depth costs no call stack.

use std::collections::HashSet;
use std::sync::Arc;

use super::image::*;
use crate::perl::value::{HashKey, Hook, HookKind, PerlData, PerlRef, PerlValue, Sv, SvId};
use crate::perl::{Error, Result};

/// Thaws an image; see [`storable::thaw`](crate::perl::storable::thaw).
pub(crate) fn thaw(image: &[u8]) -> Result<PerlData> {
    let mut input = Input::new(image);
    let order = input.header()?;
    let mut decoder = Decoder {
        input,
        order,
        svs: Vec::new(),
        classes: Vec::new(),
        open: Vec::new(),
    };
    let root = decoder.run()?;
    if decoder.input.remaining() != 0 {
        return Err(decoder
            .input
            .malformed(format!("{} bytes after the end", decoder.input.remaining())));
    }
    Ok(PerlData::from_parts(decoder.svs, root))
}

/// How the numbers of this image are written.
#[derive(Clone, Copy)]
struct Order {
    /// `nfreeze`: lengths big-endian.
    network: bool,
    /// Native integers and doubles are big-endian.
    big_endian: bool,
    /// Bytes of a native integer (`SX_INTEGER`).
    iv_size: usize,
}

struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8]) -> Input<'a> {
        Input { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn malformed(&self, reason: impl Into<String>) -> Error {
        Error::Malformed {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.malformed(format!("{n} bytes needed, {} left", self.remaining())));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    /// A big-endian i32 (object numbers, `SX_NETINT`).
    fn i32_be(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Storable's `RLEN`: an i32 in the image's order; negative is malformed.
    fn len(&mut self, order: Order, what: &str) -> Result<usize> {
        let raw = self.array::<4>()?;
        let n = if order.network || order.big_endian {
            i32::from_be_bytes(raw)
        } else {
            i32::from_le_bytes(raw)
        };
        usize::try_from(n).map_err(|_| {
            self.pos -= 4;
            self.malformed(format!("negative {what} length {n}"))
        })
    }

    /// A 64-bit length (`SX_LOBJECT`): two big-endian u32 halves in network order, else a
    /// native u64.
    fn len64(&mut self, order: Order) -> Result<u64> {
        let raw = self.array::<8>()?;
        Ok(if order.network || order.big_endian {
            u64::from_be_bytes(raw)
        } else {
            u64::from_le_bytes(raw)
        })
    }

    /// The header: which order the numbers are in. Refuses images of other Perls' number
    /// sizes and of formats older than binary major 2.
    fn header(&mut self) -> Result<Order> {
        if self.bytes.starts_with(FILE_MAGIC) {
            self.pos = FILE_MAGIC.len();
        }
        let start = self.pos;
        let first = self.u8()?;
        let major = first >> 1;
        if major != BIN_MAJOR {
            return Err(Error::Unsupported {
                offset: start,
                what: if major < BIN_MAJOR {
                    format!("an image of Storable binary format {major} (before Storable 0.7)")
                } else {
                    format!("an image of Storable binary format {major} (newer than 2)")
                },
            });
        }
        let minor = self.u8()?;
        if minor > BIN_MINOR_MAX {
            return Err(Error::Unsupported {
                offset: start + 1,
                what: format!(
                    "an image of Storable binary format 2.{minor} (newer than 2.{BIN_MINOR_MAX})"
                ),
            });
        }
        if first & NETORDER_BIT != 0 {
            return Ok(Order {
                network: true,
                big_endian: cfg!(target_endian = "big"),
                iv_size: IV_SIZE,
            });
        }
        let order_at = self.pos;
        let n = usize::from(self.u8()?);
        let (big_endian, iv_size) = match self.take(n)? {
            b"12345678" => (false, 8),
            b"87654321" => (true, 8),
            b"1234" => (false, 4),
            b"4321" => (true, 4),
            other => {
                return Err(Error::Unsupported {
                    offset: order_at,
                    what: format!("byte order {:?}", String::from_utf8_lossy(other)),
                });
            }
        };
        self.take(3)?; // sizeof(int), sizeof(long), sizeof(char *): not used by the format
        if minor >= MINOR_WITH_NV_SIZE {
            let at = self.pos;
            let nv = self.u8()?;
            if usize::from(nv) != NV_SIZE {
                return Err(Error::Unsupported {
                    offset: at,
                    what: format!("{nv}-byte doubles (a Perl built with long doubles)"),
                });
            }
        }
        Ok(Order {
            network: false,
            big_endian,
            iv_size,
        })
    }
}

/// An array, hash or reference whose contents are still being read.
enum Open {
    Array {
        id: SvId,
        left: usize,
        items: Vec<SvId>,
    },
    Hash {
        id: SvId,
        left: usize,
        flagged: bool,
        entries: Vec<(HashKey, SvId)>,
        seen: HashSet<(bool, Vec<u8>)>,
    },
    Ref {
        id: SvId,
    },
    /// An `SX_HOOK` object whose referred values are being read (`SHF_NEED_RECURSE`).
    Hook {
        id: SvId,
        kind: HookKind,
        /// Behind `SX_LOBJECT`: the frozen string has a 64-bit length.
        large: bool,
    },
}

/// What reading one item gave.
enum Step {
    /// A complete value (a scalar, an empty array or hash, or a back-reference).
    Value(SvId),
    /// An array, hash or reference was opened; its contents follow.
    Opened,
}

struct Decoder<'a> {
    input: Input<'a>,
    order: Order,
    /// Index = Storable's object number (tag).
    svs: Vec<Sv>,
    /// Class names by index, for `SX_IX_BLESS`.
    classes: Vec<Arc<str>>,
    open: Vec<Open>,
}

impl Decoder<'_> {
    /// Reads items until the root is complete; returns its id.
    fn run(&mut self) -> Result<SvId> {
        loop {
            let Step::Value(mut value) = self.item()? else {
                continue;
            };
            // Hand the value to the innermost open container, closing every container it
            // completes.
            loop {
                let Some(open) = self.open.last_mut() else {
                    return Ok(value);
                };
                match open {
                    Open::Ref { id } => {
                        let id = *id;
                        if let PerlValue::Ref(r) = &mut self.svs[id.index()].value {
                            r.target = value;
                        }
                        self.open.pop();
                        value = id;
                    }
                    Open::Hook { id, kind, large } => {
                        // The value read is known by its object number; the hook's list
                        // names it.
                        let (id, kind, large) = (*id, *kind, *large);
                        let flags = self.input.u8()?;
                        if flags & SHF_NEED_RECURSE != 0 {
                            break;
                        }
                        self.open.pop();
                        self.hook_tail(id, kind, flags, large)?;
                        value = id;
                    }
                    Open::Array { id, left, items } => {
                        let (id, at) = (*id, self.input.pos);
                        check_element(&self.svs, value, at)?;
                        items.push(value);
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        let Some(Open::Array { items, .. }) = self.open.pop() else {
                            unreachable!("the innermost open item is this array");
                        };
                        self.svs[id.index()].value = PerlValue::Array(items);
                        value = id;
                    }
                    Open::Hash { id, flagged, .. } => {
                        let (id, flagged, at) = (*id, *flagged, self.input.pos);
                        check_element(&self.svs, value, at)?;
                        let key = read_key(&mut self.input, self.order, flagged)?;
                        let Some(Open::Hash {
                            left,
                            entries,
                            seen,
                            ..
                        }) = self.open.last_mut()
                        else {
                            unreachable!("the innermost open item is this hash");
                        };
                        let (utf8, bytes) = key.perl_identity();
                        if !seen.insert((utf8, bytes.into_owned())) {
                            return Err(Error::Malformed {
                                offset: at,
                                reason: format!("hash key {:?} appears twice", key.text()),
                            });
                        }
                        entries.push((key, value));
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        let Some(Open::Hash { entries, .. }) = self.open.pop() else {
                            unreachable!("the innermost open item is this hash");
                        };
                        self.svs[id.index()].value = PerlValue::Hash(entries);
                        value = id;
                    }
                }
            }
        }
    }

    /// A new value with the next object number.
    fn new_sv(&mut self, value: PerlValue, class: Option<Arc<str>>) -> Result<SvId> {
        let id = SvId::from_index(self.svs.len())
            .ok_or_else(|| self.input.malformed("more than 2^32 values"))?;
        self.svs.push(Sv { value, class });
        Ok(id)
    }

    fn scalar(&mut self, value: PerlValue, class: Option<Arc<str>>) -> Result<Step> {
        self.new_sv(value, class).map(Step::Value)
    }

    /// Reads one item: its bless prefix, if any, and its marker.
    fn item(&mut self) -> Result<Step> {
        let mut at = self.input.pos;
        let mut marker = self.input.u8()?;
        let mut class = None;
        if marker == SX_BLESS || marker == SX_IX_BLESS {
            class = Some(self.bless(marker)?);
            at = self.input.pos;
            marker = self.input.u8()?;
            if matches!(marker, SX_BLESS | SX_IX_BLESS | SX_OBJECT) {
                return Err(Error::Malformed {
                    offset: at,
                    reason: format!("marker {marker} after a bless marker"),
                });
            }
        }
        let order = self.order;
        match marker {
            SX_OBJECT => {
                let tag = self.input.i32_be()? as u32;
                self.back_reference(u64::from(tag), at)
            }
            SX_LOBJECT => self.large(class, at),
            SX_UNDEF | SX_SV_UNDEF | SX_SVUNDEF_ELEM => self.scalar(PerlValue::Undef, class),
            SX_SV_YES | SX_BOOLEAN_TRUE => self.scalar(PerlValue::Bool(true), class),
            SX_SV_NO | SX_BOOLEAN_FALSE => self.scalar(PerlValue::Bool(false), class),
            SX_BYTE => {
                let b = self.input.u8()?;
                self.scalar(PerlValue::Int(i64::from(b) - BYTE_OFFSET), class)
            }
            SX_INTEGER => {
                let raw = self.input.take(order.iv_size)?;
                let n = match (order.iv_size, order.big_endian) {
                    (8, false) => i64::from_le_bytes(raw.try_into().expect("8 bytes")),
                    (8, true) => i64::from_be_bytes(raw.try_into().expect("8 bytes")),
                    (_, false) => i64::from(i32::from_le_bytes(raw.try_into().expect("4 bytes"))),
                    (_, true) => i64::from(i32::from_be_bytes(raw.try_into().expect("4 bytes"))),
                };
                self.scalar(PerlValue::Int(n), class)
            }
            SX_NETINT => {
                let n = self.input.i32_be()?;
                self.scalar(PerlValue::Int(i64::from(n)), class)
            }
            SX_DOUBLE => {
                let raw = self.input.array::<NV_SIZE>()?;
                let x = if order.big_endian {
                    f64::from_be_bytes(raw)
                } else {
                    f64::from_le_bytes(raw)
                };
                self.scalar(PerlValue::Num(x), class)
            }
            SX_SCALAR | SX_UTF8STR => {
                let n = usize::from(self.input.u8()?);
                self.string(n, marker == SX_UTF8STR, class)
            }
            SX_LSCALAR | SX_LUTF8STR => {
                let n = self.input.len(order, "string")?;
                self.string(n, marker == SX_LUTF8STR, class)
            }
            SX_ARRAY => {
                let n = self.input.len(order, "array")?;
                self.open_array(n, class)
            }
            SX_HASH | SX_FLAG_HASH => {
                let flagged = marker == SX_FLAG_HASH;
                if flagged {
                    self.hash_flags()?;
                }
                let n = self.input.len(order, "hash")?;
                self.open_hash(n, flagged, class)
            }
            SX_REF | SX_WEAKREF | SX_OVERLOAD | SX_WEAKOVERLOAD => {
                let r = PerlRef {
                    // Set when the target has been read.
                    target: SvId::from_index(0).expect("0 is an id"),
                    weak: matches!(marker, SX_WEAKREF | SX_WEAKOVERLOAD),
                    overloaded: matches!(marker, SX_OVERLOAD | SX_WEAKOVERLOAD),
                };
                let id = self.new_sv(PerlValue::Ref(r), class)?;
                self.open.push(Open::Ref { id });
                Ok(Step::Opened)
            }
            SX_TIED_ARRAY | SX_TIED_HASH | SX_TIED_SCALAR | SX_TIED_KEY | SX_TIED_IDX => {
                Err(unsupported(at, "a tied variable"))
            }
            SX_HOOK => self.hook(class, false, at),
            SX_CODE => Err(unsupported(at, "a code reference")),
            SX_REGEXP => Err(unsupported(at, "a regular expression")),
            SX_VSTRING | SX_LVSTRING => Err(unsupported(at, "a v-string")),
            other => Err(Error::Malformed {
                offset: at,
                reason: format!("unknown marker {other}"),
            }),
        }
    }

    /// The class of `SX_BLESS` (a new class name) or `SX_IX_BLESS` (an earlier one).
    fn bless(&mut self, marker: u8) -> Result<Arc<str>> {
        let at = self.input.pos;
        let mut n = usize::from(self.input.u8()?);
        if n & usize::from(LONG_BLESS_FLAG) != 0 {
            n = self.input.len(self.order, "class name")?;
        }
        if marker == SX_IX_BLESS {
            return self
                .classes
                .get(n)
                .cloned()
                .ok_or_else(|| Error::Malformed {
                    offset: at,
                    reason: format!(
                        "class #{n} used before it was named ({} known)",
                        self.classes.len()
                    ),
                });
        }
        let name = self.input.take(n)?;
        let name: Arc<str> = std::str::from_utf8(name)
            .map_err(|_| unsupported(at, "a class name that is not UTF-8"))?
            .into();
        self.classes.push(name.clone());
        Ok(name)
    }

    fn back_reference(&mut self, tag: u64, at: usize) -> Result<Step> {
        self.seen(tag, at).map(Step::Value)
    }

    /// The value with object number `tag`, which must have been read already.
    fn seen(&self, tag: u64, at: usize) -> Result<SvId> {
        usize::try_from(tag)
            .ok()
            .filter(|&t| t < self.svs.len())
            .and_then(SvId::from_index)
            .ok_or_else(|| Error::Malformed {
                offset: at,
                reason: format!(
                    "back-reference to value #{tag}, but only {} values precede it",
                    self.svs.len()
                ),
            })
    }

    fn string(&mut self, n: usize, utf8: bool, class: Option<Arc<str>>) -> Result<Step> {
        let at = self.input.pos;
        let bytes = self.input.take(n)?;
        let value = if utf8 {
            let s = std::str::from_utf8(bytes).map_err(|e| Error::Malformed {
                offset: at + e.valid_up_to(),
                reason: "UTF-8 string is not valid UTF-8".into(),
            })?;
            PerlValue::Str(s.to_owned())
        } else {
            PerlValue::Bytes(bytes.to_vec())
        };
        self.scalar(value, class)
    }

    fn open_array(&mut self, n: usize, class: Option<Arc<str>>) -> Result<Step> {
        // Every element takes at least one byte.
        self.check_count(n, 1, "array")?;
        let id = self.new_sv(PerlValue::Array(Vec::new()), class)?;
        if n == 0 {
            return Ok(Step::Value(id));
        }
        self.open.push(Open::Array {
            id,
            left: n,
            // Nothing reserved for the `n` items: see `check_count`.
            items: Vec::new(),
        });
        Ok(Step::Opened)
    }

    fn open_hash(&mut self, n: usize, flagged: bool, class: Option<Arc<str>>) -> Result<Step> {
        // Every entry takes at least a one-byte value and a four-byte key length.
        self.check_count(n, 5, "hash")?;
        let id = self.new_sv(PerlValue::Hash(Vec::new()), class)?;
        if n == 0 {
            return Ok(Step::Value(id));
        }
        self.open.push(Open::Hash {
            id,
            left: n,
            flagged,
            // Nothing reserved for the `n` entries: see `check_count`.
            entries: Vec::new(),
            seen: HashSet::new(),
        });
        Ok(Step::Opened)
    }

    /// `SX_HOOK` (after `SX_LOBJECT` when `large`): the object takes its object number now,
    /// before the values it refers to, as in Perl.
    fn hook(&mut self, class: Option<Arc<str>>, large: bool, at: usize) -> Result<Step> {
        if class.is_some() {
            return Err(Error::Malformed {
                offset: at,
                reason: "a hook object after a bless marker".into(),
            });
        }
        let flags_at = self.input.pos;
        let flags = self.input.u8()?;
        let kind = match flags & SHF_TYPE_MASK {
            SHT_SCALAR => HookKind::Scalar,
            SHT_ARRAY => HookKind::Array,
            SHT_HASH => HookKind::Hash,
            other => {
                debug_assert_eq!(other, SHT_EXTRA);
                return Err(unsupported(
                    flags_at,
                    "a tied variable frozen by a STORABLE_freeze hook",
                ));
            }
        };
        let empty = Hook::new(kind, Vec::new(), Vec::new());
        let id = self.new_sv(PerlValue::Hook(empty), None)?;
        if flags & SHF_NEED_RECURSE != 0 {
            self.open.push(Open::Hook { id, kind, large });
            return Ok(Step::Opened);
        }
        self.hook_tail(id, kind, flags, large)?;
        Ok(Step::Value(id))
    }

    /// The rest of a hook object, from its last flags: class, frozen string, list.
    fn hook_tail(&mut self, id: SvId, kind: HookKind, flags: u8, large: bool) -> Result<()> {
        let order = self.order;
        let at = self.input.pos;
        let class = if flags & SHF_IDX_CLASSNAME != 0 {
            let n = if flags & SHF_LARGE_CLASSLEN != 0 {
                self.input.len(order, "class index")?
            } else {
                usize::from(self.input.u8()?)
            };
            self.classes
                .get(n)
                .cloned()
                .ok_or_else(|| Error::Malformed {
                    offset: at,
                    reason: format!(
                        "hook class #{n} used before it was named ({} known)",
                        self.classes.len()
                    ),
                })?
        } else {
            let n = if flags & SHF_LARGE_CLASSLEN != 0 {
                self.input.len(order, "class name")?
            } else {
                usize::from(self.input.u8()?)
            };
            let name = self.input.take(n)?;
            let name: Arc<str> = std::str::from_utf8(name)
                .map_err(|_| unsupported(at, "a class name that is not UTF-8"))?
                .into();
            self.classes.push(name.clone());
            name
        };
        let n = if large {
            // Anything this long is longer than the image.
            usize::try_from(self.input.len64(order)?).unwrap_or(usize::MAX)
        } else if flags & SHF_LARGE_STRLEN != 0 {
            self.input.len(order, "hook string")?
        } else {
            usize::from(self.input.u8()?)
        };
        let frozen = self.input.take(n)?.to_vec();
        let mut refs = Vec::new();
        if flags & SHF_HAS_LIST != 0 {
            let (n, wide) = if flags & SHF_LARGE_LISTLEN != 0 {
                let raw = self.input.array::<4>()?;
                let n = if order.network || order.big_endian {
                    i32::from_be_bytes(raw)
                } else {
                    i32::from_le_bytes(raw)
                };
                // A negative count: the object numbers are 64-bit.
                (n.unsigned_abs() as usize, n < 0)
            } else {
                (usize::from(self.input.u8()?), false)
            };
            self.check_count(n, if wide { 8 } else { 4 }, "hook list")?;
            refs.reserve_exact(n);
            for _ in 0..n {
                let tag_at = self.input.pos;
                let tag = if wide {
                    self.input.len64(order)?
                } else {
                    u64::from(self.input.i32_be()? as u32)
                };
                refs.push(self.seen(tag, tag_at)?);
            }
        }
        let sv = &mut self.svs[id.index()];
        sv.value = PerlValue::Hook(Hook::new(kind, frozen, refs));
        sv.class = Some(class);
        Ok(())
    }

    /// Refuses a count of items that cannot fit in the bytes left. Each count is checked
    /// alone, and containers nested inside one another may each declare about the rest of the
    /// image, six bytes a level: so nothing is reserved for a declared count, and containers
    /// grow as their items arrive (by doubling: a large one costs a few copies). Reserving
    /// every count in full cost memory quadratic in the image (a 64 KiB value took 237 MiB,
    /// a 192 KiB one 1.4 GiB); even sixteen items a level, 360 MB for 1 MiB of such levels.
    fn check_count(&self, n: usize, min_bytes: usize, what: &str) -> Result<()> {
        if n > self.input.remaining() / min_bytes {
            return Err(self.input.malformed(format!(
                "{what} of {n} entries in {} remaining bytes",
                self.input.remaining()
            )));
        }
        Ok(())
    }

    /// The hash flags of `SX_FLAG_HASH`: only 0 (a hash with flagged keys) is read.
    fn hash_flags(&mut self) -> Result<()> {
        let at = self.input.pos;
        match self.input.u8()? {
            0 => Ok(()),
            SHV_RESTRICTED => Err(unsupported(at, "a restricted hash (Hash::Util::lock_keys)")),
            other => Err(Error::Malformed {
                offset: at,
                reason: format!("unknown hash flags {other:#x}"),
            }),
        }
    }

    /// `SX_LOBJECT`: a string, array or hash with a 64-bit length, or a back-reference with a
    /// 64-bit object number.
    fn large(&mut self, class: Option<Arc<str>>, at: usize) -> Result<Step> {
        let kind = self.input.u8()?;
        if kind == SX_FLAG_HASH {
            self.hash_flags()?;
        }
        if kind == SX_HOOK {
            return self.hook(class, true, at);
        }
        let n = self.input.len64(self.order)?;
        if kind == SX_OBJECT {
            if class.is_some() {
                return Err(self.input.malformed("blessed back-reference"));
            }
            return self.back_reference(n, at);
        }
        // Anything this long is longer than the image.
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        match kind {
            SX_LSCALAR | SX_LUTF8STR => self.string(n, kind == SX_LUTF8STR, class),
            SX_ARRAY => self.open_array(n, class),
            SX_HASH | SX_FLAG_HASH => self.open_hash(n, kind == SX_FLAG_HASH, class),
            other => Err(Error::Malformed {
                offset: at,
                reason: format!("large object of type {other}"),
            }),
        }
    }
}

/// Reads the key that follows a hash value.
fn read_key(input: &mut Input<'_>, order: Order, flagged: bool) -> Result<HashKey> {
    let at = input.pos;
    let flags = if flagged { input.u8()? } else { 0 };
    if flags & SHV_K_RESTRICTED != 0 {
        return Err(unsupported(
            at,
            "a locked, placeholder or SV hash key (a restricted hash)",
        ));
    }
    if flags & !(SHV_K_UTF8 | SHV_K_WASUTF8) != 0 || flags == SHV_K_UTF8 | SHV_K_WASUTF8 {
        return Err(Error::Malformed {
            offset: at,
            reason: format!("bad hash key flags {flags:#x}"),
        });
    }
    let n = input.len(order, "hash key")?;
    let bytes = input.take(n)?;
    Ok(if flags & SHV_K_UTF8 != 0 {
        HashKey::Str(
            std::str::from_utf8(bytes)
                .map_err(|_| Error::Malformed {
                    offset: at,
                    reason: "UTF-8 hash key is not valid UTF-8".into(),
                })?
                .to_owned(),
        )
    } else if flags & SHV_K_WASUTF8 != 0 {
        HashKey::Str(bytes.iter().map(|&b| char::from(b)).collect())
    } else {
        HashKey::Bytes(bytes.to_vec())
    })
}

/// Array elements and hash values are scalars: an array or hash there is malformed (Perl
/// only reaches them through references).
fn check_element(svs: &[Sv], id: SvId, at: usize) -> Result<()> {
    let value = &svs[id.index()].value;
    if value.is_container() {
        return Err(Error::Malformed {
            offset: at,
            reason: format!("{} stored directly as an element", value.kind()),
        });
    }
    Ok(())
}

fn unsupported(offset: usize, what: &str) -> Error {
    Error::Unsupported {
        offset,
        what: what.into(),
    }
}
