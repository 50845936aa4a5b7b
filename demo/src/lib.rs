//! The README's demo lives in `examples/prefork.rs`: `cargo run --release --example prefork`
//! from the repository's root. This package exists so that the demo builds only what it uses.
