//! Arbitrary bytes as a page, then random page operations: nothing may panic, and the
//! properties in `fastmmap_fuzz::page_bytes` must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastmmap_fuzz::page_bytes::run(data));
