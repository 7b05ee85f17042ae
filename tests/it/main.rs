//! The integration tests, one crate: each module was a test binary of its own, and each of
//! those compiled `common` and linked the whole of push-serve again. Run one module with
//! `cargo test --test it contract::` (the CI's Redis re-run selects modules this way).

mod common;

mod admin;
mod bench_smoke;
mod binary;
mod browser;
mod callbacks;
mod client_js;
mod cluster;
mod conformance;
mod contract;
mod daemon;
mod examples;
mod fuzz_corpus;
mod limits;
mod metrics;
mod pools;
mod pusher;
mod redis_cluster;
mod reload;
mod seed_samples;
mod seeds;
mod soak;
mod sse;
mod streams;
