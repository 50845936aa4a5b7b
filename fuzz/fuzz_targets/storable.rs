//! Arbitrary bytes as a Storable image and as compressed Perl cache values: nothing may
//! panic, and the properties in `fastmmap_fuzz::storable` must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastmmap_fuzz::storable::run(data));
