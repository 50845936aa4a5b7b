//! Storable's image format, as `Storable.xs` (Storable 3.x, binary format 2.11/2.12) writes
//! and reads it. Only what this crate reads or writes is named here.
//!
//! ```text
//! image   = ["pst0"] header item              ("pst0" only in files from Storable::store)
//! header  = 0x04 MINOR BO_LEN BYTEORDER SIZEOF_INT SIZEOF_LONG SIZEOF_PTR SIZEOF_NV   freeze
//!         | 0x05 MINOR                                                                nfreeze
//!           (the first byte is BIN_MAJOR << 1 | network order; SIZEOF_NV only if MINOR >= 2)
//! item    = SX_OBJECT TAG                      back-reference: TAG is a big-endian i32
//!         | SX_BLESS LEN8 CLASS item           LEN8 = u8, or 0x80 then LEN (> 127 bytes)
//!         | SX_IX_BLESS IDX8 item              IDX8 = u8, or 0x80 then LEN (index > 127)
//!         | SX_UNDEF | SX_SV_UNDEF | SX_SVUNDEF_ELEM | SX_SV_YES | SX_SV_NO
//!         | SX_BYTE u8                         the integer u8 - 128
//!         | SX_INTEGER IV                      native order, IV bytes (8, or 4 on 32-bit IVs)
//!         | SX_NETINT i32_be
//!         | SX_DOUBLE NV                       native order, 8 bytes
//!         | SX_SCALAR u8 BYTES | SX_LSCALAR LEN BYTES            byte string
//!         | SX_UTF8STR u8 BYTES | SX_LUTF8STR LEN BYTES          UTF-8 string
//!         | SX_ARRAY LEN item*
//!         | SX_HASH LEN (item KEYLEN KEY)*
//!         | SX_FLAG_HASH HFLAGS LEN (item KFLAGS KEYLEN KEY)*
//!         | SX_REF item | SX_WEAKREF item | SX_OVERLOAD item | SX_WEAKOVERLOAD item
//!         | SX_LOBJECT TYPE [HFLAGS] U64 ...   strings, arrays, hashes over 2 GiB; big tags
//!         | [SX_LOBJECT] SX_HOOK hook          an object frozen by STORABLE_freeze (below)
//! hook    = (FLAGS item)* FLAGS CLASS FROZEN [LIST]
//!           every FLAGS but the last has SHF_NEED_RECURSE: a value the hook referred to,
//!           not stored yet, follows it; the type bits of the first FLAGS give the object's
//!           kind (SHT_SCALAR / SHT_ARRAY / SHT_HASH)
//! CLASS   = u8 or LEN (SHF_LARGE_CLASSLEN): with SHF_IDX_CLASSNAME an index into the class
//!           table (shared with SX_BLESS), else the length of a new class name, then the name
//! FROZEN  = u8 or LEN (SHF_LARGE_STRLEN), or U64 after SX_LOBJECT; then the hook's string
//! LIST    = (SHF_HAS_LIST) u8 or LEN (SHF_LARGE_LISTLEN) count, then each referred value's
//!           object number as a big-endian u32; a negative LEN count means U64 numbers
//! LEN     = i32, big-endian in network order, else in the header's byte order
//! ```
//!
//! Every item but `SX_OBJECT` (and the bless prefixes) is one Perl value and takes the next
//! object number (tag), in the order the items start: a reference before what it refers to,
//! an array before its elements.

/// Back-reference to an already stored value: big-endian i32 object number.
pub(crate) const SX_OBJECT: u8 = 0;
/// Byte string, i32 length.
pub(crate) const SX_LSCALAR: u8 = 1;
/// Array: i32 length, then the elements.
pub(crate) const SX_ARRAY: u8 = 2;
/// Hash: i32 length, then value, i32 key length, key, for each entry.
pub(crate) const SX_HASH: u8 = 3;
/// Reference to the next item.
pub(crate) const SX_REF: u8 = 4;
/// `undef`.
pub(crate) const SX_UNDEF: u8 = 5;
/// Native integer (IV).
pub(crate) const SX_INTEGER: u8 = 6;
/// Native double (NV).
pub(crate) const SX_DOUBLE: u8 = 7;
/// Integer -128..=127 as one byte, offset by 128.
pub(crate) const SX_BYTE: u8 = 8;
/// Big-endian i32.
pub(crate) const SX_NETINT: u8 = 9;
/// Byte string, u8 length.
pub(crate) const SX_SCALAR: u8 = 10;
/// Tied array.
pub(crate) const SX_TIED_ARRAY: u8 = 11;
/// Tied hash.
pub(crate) const SX_TIED_HASH: u8 = 12;
/// Tied scalar.
pub(crate) const SX_TIED_SCALAR: u8 = 13;
/// Perl's immortal undef (`&PL_sv_undef`; in an array, a nonexistent element).
pub(crate) const SX_SV_UNDEF: u8 = 14;
/// Perl's immortal true.
pub(crate) const SX_SV_YES: u8 = 15;
/// Perl's immortal false.
pub(crate) const SX_SV_NO: u8 = 16;
/// The next item is blessed into the class named here (first use of the class).
pub(crate) const SX_BLESS: u8 = 17;
/// The next item is blessed into the class with this index (later uses).
pub(crate) const SX_IX_BLESS: u8 = 18;
/// An object frozen by its class's `STORABLE_freeze` hook.
pub(crate) const SX_HOOK: u8 = 19;
/// Reference to an object of a class with overloading.
pub(crate) const SX_OVERLOAD: u8 = 20;
/// Element of a tied hash.
pub(crate) const SX_TIED_KEY: u8 = 21;
/// Element of a tied array.
pub(crate) const SX_TIED_IDX: u8 = 22;
/// UTF-8 string, u8 length.
pub(crate) const SX_UTF8STR: u8 = 23;
/// UTF-8 string, i32 length.
pub(crate) const SX_LUTF8STR: u8 = 24;
/// Hash with flags: hash flags byte, i32 length, then value, key flags, key length, key.
pub(crate) const SX_FLAG_HASH: u8 = 25;
/// Code reference (as Perl source, `$Storable::Deparse`).
pub(crate) const SX_CODE: u8 = 26;
/// Weak reference to the next item.
pub(crate) const SX_WEAKREF: u8 = 27;
/// Weak reference to an object of a class with overloading.
pub(crate) const SX_WEAKOVERLOAD: u8 = 28;
/// v-string magic, u8 length, before the string it belongs to.
pub(crate) const SX_VSTRING: u8 = 29;
/// v-string magic, i32 length.
pub(crate) const SX_LVSTRING: u8 = 30;
/// An array element that is `&PL_sv_undef`.
pub(crate) const SX_SVUNDEF_ELEM: u8 = 31;
/// Regular expression.
pub(crate) const SX_REGEXP: u8 = 32;
/// Large object: a type marker, then a 64-bit length.
pub(crate) const SX_LOBJECT: u8 = 33;
/// A boolean true (Storable ≥ 3.32, binary minor 12).
pub(crate) const SX_BOOLEAN_TRUE: u8 = 34;
/// A boolean false (Storable ≥ 3.32, binary minor 12).
pub(crate) const SX_BOOLEAN_FALSE: u8 = 35;

/// `SX_HOOK` flags: the object's type (`SHT_*`).
pub(crate) const SHF_TYPE_MASK: u8 = 0x03;
/// `SX_HOOK` flags: the class name's length or index is an i32 (else a u8).
pub(crate) const SHF_LARGE_CLASSLEN: u8 = 0x04;
/// `SX_HOOK` flags: the frozen string's length is an i32 (else a u8).
pub(crate) const SHF_LARGE_STRLEN: u8 = 0x08;
/// `SX_HOOK` flags: the list's count is an i32 (else a u8).
pub(crate) const SHF_LARGE_LISTLEN: u8 = 0x10;
/// `SX_HOOK` flags: the class is an index into the class table (else a new name).
pub(crate) const SHF_IDX_CLASSNAME: u8 = 0x20;
/// `SX_HOOK` flags: a referred value follows, then flags again.
pub(crate) const SHF_NEED_RECURSE: u8 = 0x40;
/// `SX_HOOK` flags: a list of referred values' object numbers ends the hook.
pub(crate) const SHF_HAS_LIST: u8 = 0x80;
/// `SX_HOOK` object type: a scalar.
pub(crate) const SHT_SCALAR: u8 = 0;
/// `SX_HOOK` object type: an array.
pub(crate) const SHT_ARRAY: u8 = 1;
/// `SX_HOOK` object type: a hash.
pub(crate) const SHT_HASH: u8 = 2;
/// `SX_HOOK` object type: a tied variable, whose real type follows in an extra byte.
pub(crate) const SHT_EXTRA: u8 = 3;

/// Storable's binary major version (0.7 and later).
pub(crate) const BIN_MAJOR: u8 = 2;
/// The newest binary minor version read (Storable 3.32 writes 12 when it writes booleans).
pub(crate) const BIN_MINOR_MAX: u8 = 12;
/// The binary minor version written (as Storable 3.x on Perl ≥ 5.19: readable by all of them).
pub(crate) const BIN_WRITE_MINOR: u8 = 11;
/// From this minor on, a native header carries `sizeof(NV)`.
pub(crate) const MINOR_WITH_NV_SIZE: u8 = 2;
/// Low bit of the first header byte: network order (`nfreeze`).
pub(crate) const NETORDER_BIT: u8 = 1;
/// The prefix of images in files written by `Storable::store`.
pub(crate) const FILE_MAGIC: &[u8] = b"pst0";

/// Strings up to this length use the one-byte-length markers.
pub(crate) const LG_SCALAR: usize = 255;
/// Class names and class indexes up to this use one byte; above, 0x80 then an i32.
pub(crate) const LG_BLESS: usize = 127;
/// The flag byte before a long class name or index.
pub(crate) const LONG_BLESS_FLAG: u8 = 0x80;
/// `SX_BYTE` holds `value + BYTE_OFFSET`.
pub(crate) const BYTE_OFFSET: i64 = 128;

/// Hash flag: a restricted hash (`Hash::Util::lock_keys`).
pub(crate) const SHV_RESTRICTED: u8 = 0x01;
/// Key flag: the key is UTF-8.
pub(crate) const SHV_K_UTF8: u8 = 0x01;
/// Key flag: the key was a character string, stored as Latin-1 bytes.
pub(crate) const SHV_K_WASUTF8: u8 = 0x02;
/// Key flags of restricted hashes and SV keys (locked value, SV key, placeholder).
pub(crate) const SHV_K_RESTRICTED: u8 = 0x04 | 0x08 | 0x10;

/// The bytes of a double or integer.
pub(crate) const NV_SIZE: usize = 8;
/// The bytes of this crate's integers (IV of a 64-bit Perl).
pub(crate) const IV_SIZE: usize = 8;
