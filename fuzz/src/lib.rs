//! The fuzz targets' bodies (see `targets.rs`); `fuzz_targets/*.rs` only hand them libFuzzer's
//! input.

mod targets;

pub use targets::*;
