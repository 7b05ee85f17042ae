//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) and the saved crash reproducers
//! (`fuzz/regressions/<target>/*`) through the same target bodies the libFuzzer binaries run, so
//! `cargo test` on stable keeps every input the fuzzers found interesting passing. Fuzzing itself
//! needs cargo-fuzz: see FUZZING.md.

#[allow(dead_code)]
#[path = "../../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

/// Runs `target` on every file of `fuzz/corpus/<name>/` and `fuzz/regressions/<name>/`;
/// returns how many there were.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    eprintln!("{name}: replaying {} inputs", files.len());
    for path in &files {
        let data = std::fs::read(path).expect("corpus file");
        let result = std::panic::catch_unwind(|| target(&data));
        if let Err(panic) = result {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            panic!("{} failed: {reason}", path.display());
        }
    }
    files.len()
}

#[test]
fn config_corpus() {
    assert!(replay("config", targets::config) > 0, "no config corpus");
}

#[test]
fn access_key_corpus() {
    assert!(
        replay("access_key", targets::access_key) > 0,
        "no access_key corpus"
    );
}

#[test]
fn http_corpus() {
    assert!(replay("http", targets::http) > 0, "no http corpus");
}

#[test]
fn ws_frames_corpus() {
    assert!(
        replay("ws_frames", targets::ws_frames) > 0,
        "no ws_frames corpus"
    );
}
