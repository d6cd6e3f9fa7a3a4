//! The C ABI check (scripts/abi-check.sh) passes on the built library and fails on scratch builds
//! that break it: an export removed (the static library relinked into a shared one without it),
//! a signature or a struct changed in the header, a SONAME bumped without a new baseline, a
//! symbol exported that the header does not declare.
//!
//! Needs abidw/abidiff (Debian: abigail-tools), cc and python3, like the check itself.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use support::{lib_dir, root};

/// A scratch directory, removed on drop (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("grenache-abi-{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn header() -> PathBuf {
    root().join("include/grenache.h")
}

fn committed_header() -> String {
    fs::read_to_string(header()).expect("include/grenache.h")
}

/// Runs scripts/abi-check.sh with `args`.
fn abi_check(args: &[&Path]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/abi-check.sh"));
    for pair in args.chunks(2) {
        cmd.arg(pair[0]).arg(pair[1]);
    }
    cmd.output().expect("run scripts/abi-check.sh")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_fails_with(out: &Output, needle: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(1), "the check should fail (status 1):\n{all}");
    assert!(all.contains(needle), "expected {needle:?} in:\n{all}");
}

/// Links `libgrenache.a` into `dir/libgrenache.so` with `soname`, exporting the header's
/// functions except `drop`, plus whatever `extra_c` defines and `extra_exports` lists.
fn relink(dir: &Path, soname: &str, drop: &[&str], extra_c: Option<&str>, extra_exports: &[&str]) -> PathBuf {
    let exported = Command::new("nm").args(["-D", "--defined-only"]).arg(lib_dir().join("libgrenache.so")).output().expect("nm");
    assert!(exported.status.success());
    let mut map = String::from("{\n  global:\n");
    for sym in String::from_utf8_lossy(&exported.stdout).lines().filter_map(|l| l.split_whitespace().last()) {
        if !drop.contains(&sym) {
            map.push_str(&format!("    {sym};\n"));
        }
    }
    for sym in extra_exports {
        map.push_str(&format!("    {sym};\n"));
    }
    map.push_str("  local:\n    *;\n};\n");
    fs::write(dir.join("scratch.map"), map).expect("write map");
    let lib = dir.join("libgrenache.so");
    let mut cc = Command::new("cc");
    cc.arg("-shared").arg("-o").arg(&lib);
    cc.arg(format!("-Wl,-soname,{soname}"));
    cc.arg(format!("-Wl,--version-script={}", dir.join("scratch.map").display()));
    if let Some(src) = extra_c {
        let c = dir.join("extra.c");
        fs::write(&c, src).expect("write extra.c");
        cc.arg("-fPIC").arg(c);
    }
    cc.arg("-Wl,--whole-archive").arg(lib_dir().join("libgrenache.a")).arg("-Wl,--no-whole-archive");
    cc.args(["-lpthread", "-ldl", "-lm"]);
    let out = cc.output().expect("cc");
    assert!(out.status.success(), "relink failed: {}", text(&out));
    lib
}

fn write_header(dir: &Path, content: &str) -> PathBuf {
    let h = dir.join("grenache.h");
    fs::write(&h, content).expect("write header");
    h
}

/// Deletes the header line that declares `func`.
fn without_declaration(header: &str, func: &str) -> String {
    let needle = format!(" {func}(");
    let mut out = String::new();
    let mut removed = false;
    for line in header.split_inclusive('\n') {
        if !removed && line.contains(&needle) && line.trim_end().ends_with(");") {
            removed = true;
            continue;
        }
        out.push_str(line);
    }
    assert!(removed, "no one-line declaration of {func} in the header");
    out
}

fn lib_arg() -> PathBuf {
    lib_dir().join("libgrenache.so")
}

#[test]
fn built_library_matches_the_committed_baseline() {
    let lib = lib_arg();
    let out = abi_check(&[Path::new("--lib"), &lib]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("abi-check: OK (libgrenache.so.1"), "{}", text(&out));
}

#[test]
fn only_grenache_symbols_are_exported_and_the_soname_is_set() {
    let out = Command::new("readelf").arg("-d").arg(lib_arg()).output().expect("readelf");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Library soname: [libgrenache.so.1]"));
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(lib_arg()).output().expect("nm");
    let syms = String::from_utf8_lossy(&out.stdout).to_string();
    let names: Vec<&str> = syms.lines().filter_map(|l| l.split_whitespace().last()).collect();
    assert!(names.len() > 50, "{syms}");
    let foreign: Vec<&&str> = names.iter().filter(|n| !n.starts_with("grenache_")).collect();
    assert!(foreign.is_empty(), "exported beyond grenache_*: {foreign:?}");
}

#[test]
fn removing_an_export_fails_the_check() {
    let s = Scratch::new("drop");
    let lib = relink(&s.0, "libgrenache.so.1", &["grenache_link_put"], None, &[]);
    // As when the Rust function goes: cbindgen drops it from the header too.
    let h = write_header(&s.0, &without_declaration(&committed_header(), "grenache_link_put"));
    let out = abi_check(&[Path::new("--lib"), &lib, Path::new("--header"), &h]);
    assert_fails_with(&out, "broke without a SONAME bump");
    assert!(text(&out).contains("grenache_link_put"), "{}", text(&out));

    // The export gone but the header unchanged: caught by the symbol comparison.
    let out = abi_check(&[Path::new("--lib"), &lib]);
    assert_fails_with(&out, "does not export");
}

#[test]
fn changing_a_signature_fails_the_check() {
    let s = Scratch::new("sig");
    let before = "grenache_link_announce(const grenache_link *link, const char *name, uint16_t port";
    let committed = committed_header();
    assert!(committed.contains(before), "the header changed: update this test's pattern");
    let changed = committed.replace(before, &before.replace("uint16_t port", "uint32_t port"));
    let h = write_header(&s.0, &changed);
    let out = abi_check(&[Path::new("--lib"), &lib_arg(), Path::new("--header"), &h]);
    assert_fails_with(&out, "broke without a SONAME bump");
    assert!(text(&out).contains("grenache_link_announce"), "{}", text(&out));
}

#[test]
fn changing_a_struct_fails_the_check() {
    let s = Scratch::new("struct");
    let end = "} grenache_request_options;";
    let committed = committed_header();
    assert!(committed.contains(end), "the header changed: update this test's pattern");
    let changed = committed.replace(end, &format!("  uint32_t added;\n{end}"));
    let h = write_header(&s.0, &changed);
    let out = abi_check(&[Path::new("--lib"), &lib_arg(), Path::new("--header"), &h]);
    assert_fails_with(&out, "broke without a SONAME bump");
    assert!(text(&out).contains("grenache_request_options"), "{}", text(&out));
}

#[test]
fn a_compatible_addition_must_be_recorded() {
    let s = Scratch::new("add");
    let committed = committed_header();
    let anchor = "GRENACHE_TRANSPORT_WS = 1,";
    assert!(committed.contains(anchor), "the header changed: update this test's pattern");
    let h = write_header(&s.0, &committed.replace(anchor, &format!("{anchor}\n  GRENACHE_TRANSPORT_NEW = 99,")));
    let out = abi_check(&[Path::new("--lib"), &lib_arg(), Path::new("--header"), &h]);
    assert_fails_with(&out, "changed compatibly");
}

#[test]
fn a_new_type_is_a_compatible_addition() {
    // A type named to sort before every other: it must not shift how the others are recorded.
    let s = Scratch::new("type");
    let committed = committed_header();
    let anchor = "typedef struct grenache_";
    let at = committed.find(anchor).expect("the header declares an opaque type: update this test's pattern");
    let added = format!("{}typedef struct grenache_aaa_added grenache_aaa_added;\n{}", &committed[..at], &committed[at..]);
    let h = write_header(&s.0, &added);
    let out = abi_check(&[Path::new("--lib"), &lib_arg(), Path::new("--header"), &h]);
    assert_fails_with(&out, "changed compatibly");
}

#[test]
fn a_soname_bump_needs_a_new_baseline_and_then_passes() {
    let s = Scratch::new("bump");
    let lib = relink(&s.0, "libgrenache.so.2", &["grenache_link_put"], None, &[]);
    let h = write_header(&s.0, &without_declaration(&committed_header(), "grenache_link_put"));
    let out = abi_check(&[Path::new("--lib"), &lib, Path::new("--header"), &h]);
    assert_fails_with(&out, "record the new baseline");

    let base = s.0.join("libgrenache.abi");
    fs::copy(root().join("ffi/abi/libgrenache.abi"), &base).expect("copy baseline");
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/abi-check.sh"));
    cmd.arg("--lib").arg(&lib).arg("--header").arg(&h).arg("--baseline").arg(&base).arg("--update");
    let out = cmd.output().expect("update");
    assert!(out.status.success(), "{}", text(&out));
    let out = abi_check(&[Path::new("--lib"), &lib, Path::new("--header"), &h, Path::new("--baseline"), &base]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("libgrenache.so.2"), "{}", text(&out));
}

#[test]
fn exporting_a_foreign_symbol_fails_the_check() {
    let s = Scratch::new("extra");
    let lib = relink(&s.0, "libgrenache.so.1", &[], Some("int util_helper(void) { return 0; }\n"), &["util_helper"]);
    let out = abi_check(&[Path::new("--lib"), &lib]);
    assert_fails_with(&out, "does not declare");
    assert!(text(&out).contains("util_helper"), "{}", text(&out));
}
