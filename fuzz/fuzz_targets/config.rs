#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| push_serve_fuzz_targets::config(data));
