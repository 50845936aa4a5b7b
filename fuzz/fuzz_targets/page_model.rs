//! Operation sequences on a fresh page against a `HashMap` model (`fastmmap_fuzz::page_model`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastmmap_fuzz::page_model::run(data));
