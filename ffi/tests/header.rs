//! The committed `include/grenache.h`: its version macros match Cargo.toml and every item is
//! documented. That it is what the sources generate is checked by `scripts/gen-header.sh --verify`
//! (run by `scripts/test.sh`).

use std::path::PathBuf;

fn committed() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/grenache.h");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

#[test]
fn header_version_macros_match_cargo() {
    let h = committed();
    for (name, v) in [
        ("GRENACHE_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("GRENACHE_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("GRENACHE_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert!(h.contains(&format!("#define {name} {v}\n")), "{name} is not {v}");
    }
}

#[test]
fn every_function_and_type_is_documented() {
    // Each declaration line at top level (a function prototype, typedef, enum or define) must
    // follow the end of a doc comment.
    let h = committed();
    let lines: Vec<&str> = h.lines().collect();
    let mut undocumented = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let decl = (l.starts_with("grenache_")
            || l.starts_with("const ")
            || l.starts_with("void ")
            || l.starts_with("bool ")
            || l.starts_with("size_t ")
            || l.starts_with("uint")
            || l.starts_with("enum ")
            || (l.starts_with("typedef ") && !l.starts_with("typedef uint32_t") && !l.starts_with("typedef enum")))
            && !l.starts_with("#");
        let member = l.trim_start().starts_with("GRENACHE_") && l.starts_with("    ");
        if (decl || member) && i > 0 && !lines[i - 1].trim_end().ends_with("*/") {
            undocumented.push(*l);
        }
    }
    assert!(undocumented.is_empty(), "undocumented items in include/grenache.h: {undocumented:#?}");
}
