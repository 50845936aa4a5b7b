//! A native file with an overflow area, arbitrary bytes over its overflow table, area and
//! references, then every cache operation: the properties in `fastmmap_fuzz::overflow_bytes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastmmap_fuzz::overflow_bytes::run(data));
