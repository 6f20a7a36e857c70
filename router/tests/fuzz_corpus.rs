//! Replays the committed fuzz corpus on the stable toolchain: every file under
//! `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` goes through the function the
//! cargo-fuzz target `<target>` calls (`router::fuzzing::<target>`), so CI checks every
//! seed and every past finding without nightly or libFuzzer. See `fuzz/README.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// A fuzz target's body.
type Target = fn(&[u8]);

/// Every fuzz target, with the library function it calls.
const TARGETS: [(&str, Target); 10] = [
    ("app_instance_header", router::fuzzing::app_instance_header),
    ("config", router::fuzzing::config),
    ("duration", router::fuzzing::duration),
    ("header_rewrite", router::fuzzing::header_rewrite),
    ("proxy_http1", router::fuzzing::proxy_http1),
    ("register_message", router::fuzzing::register_message),
    ("route_lookup", router::fuzzing::route_lookup),
    ("route_table_ops", router::fuzzing::route_table_ops),
    ("sticky_cookies", router::fuzzing::sticky_cookies),
    ("traceparent", router::fuzzing::traceparent),
];

fn fuzz_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    dir.canonicalize().unwrap_or(dir)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = TARGETS.iter().find(|(name, _)| *name == target).unwrap();
    let corpus = fuzz_dir().join("corpus").join(target);
    let mut files = files_in(&corpus);
    assert!(
        !files.is_empty(),
        "the fuzz corpus {} is empty: every target needs seeds (fuzz/seeds/make_seeds.py)",
        corpus.display()
    );
    files.extend(files_in(&fuzz_dir().join("artifacts").join(target)));
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            catch_unwind(AssertUnwindSafe(|| run(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail (panic messages above); reproduce with \
         `cargo +nightly fuzz run {target} FILE` in fuzz/:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_fuzz_target_has_a_corpus_and_a_replay() {
    let targets: BTreeSet<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    let replayed: BTreeSet<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    assert_eq!(targets, replayed, "fuzz/fuzz_targets and TARGETS differ");
    for target in &targets {
        assert!(
            !files_in(&fuzz_dir().join("corpus").join(target)).is_empty(),
            "no corpus for fuzz target {target}"
        );
    }
}

#[test]
fn app_instance_header() {
    replay("app_instance_header");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn duration() {
    replay("duration");
}

#[test]
fn header_rewrite() {
    replay("header_rewrite");
}

#[test]
fn proxy_http1() {
    replay("proxy_http1");
}

#[test]
fn register_message() {
    replay("register_message");
}

#[test]
fn route_lookup() {
    replay("route_lookup");
}

#[test]
fn route_table_ops() {
    replay("route_table_ops");
}

#[test]
fn sticky_cookies() {
    replay("sticky_cookies");
}

#[test]
fn traceparent() {
    replay("traceparent");
}
