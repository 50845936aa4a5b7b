//! Shared pieces of the comparison benchmarks in `benches/`: fastmmap beside the stores and
//! caches a user would pick instead, on the same traces and the same access order.
#![deny(missing_docs)]

pub mod peers;
pub mod policies;
pub mod traces;
