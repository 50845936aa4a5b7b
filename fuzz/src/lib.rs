//! Fuzz targets for the page layer, the overflow area and the Perl value codecs of `fastmmap` (see
//! `fuzz_targets/`). The targets' logic
//! lives here so that `tests/regressions.rs` can replay saved inputs on a stable toolchain.

pub mod common;
pub mod overflow_bytes;
pub mod page_bytes;
pub mod page_model;
pub mod storable;
