//! Generates `include/grenache.h` from `ffi/src` with cbindgen (`ffi/cbindgen.toml`, the preamble
//! `ffi/header_preamble.h`, the version macros from the workspace version).
//!
//! ```sh
//! scripts/gen-header.sh            # rewrites include/grenache.h (when it changed)
//! scripts/gen-header.sh --verify   # fails when the committed header is not what the sources give
//! ```
//!
//! `scripts/test.sh` runs the `--verify` form, so a change to the C ABI's docs or signatures
//! without the regenerated header fails the test command.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let verify = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--verify") => true,
        Some(other) => {
            eprintln!("usage: gen-header [--verify] (unknown argument {other:?})");
            return ExitCode::from(2);
        }
    };
    let ffi = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let header = ffi.join("../include/grenache.h");
    let fresh = match generate(&ffi) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("gen-header: {e}");
            return ExitCode::FAILURE;
        }
    };
    let committed = std::fs::read(&header).ok();
    if committed.as_deref() == Some(&fresh[..]) {
        return ExitCode::SUCCESS;
    }
    if verify {
        eprintln!("{} is stale: run scripts/gen-header.sh and commit it", header.display());
        return ExitCode::FAILURE;
    }
    match std::fs::write(&header, &fresh) {
        Ok(()) => {
            eprintln!("wrote {}", header.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-header: cannot write {}: {e}", header.display());
            ExitCode::FAILURE
        }
    }
}

/// The header for the sources in `ffi`.
fn generate(ffi: &std::path::Path) -> Result<Vec<u8>, String> {
    let preamble = std::fs::read_to_string(ffi.join("header_preamble.h")).map_err(|e| format!("header_preamble.h: {e}"))?;
    let mut config = cbindgen::Config::from_file(ffi.join("cbindgen.toml")).map_err(|e| format!("cbindgen.toml: {e}"))?;
    let (major, minor, patch, version) =
        (env!("CARGO_PKG_VERSION_MAJOR"), env!("CARGO_PKG_VERSION_MINOR"), env!("CARGO_PKG_VERSION_PATCH"), env!("CARGO_PKG_VERSION"));
    config.header = Some(preamble.trim_end().to_string());
    config.after_includes = Some(format!(
        "\n/** Major version of this header (see grenache_version() for the library's). */\n\
         #define GRENACHE_VERSION_MAJOR {major}\n\
         /** Minor version of this header. */\n#define GRENACHE_VERSION_MINOR {minor}\n\
         /** Patch version of this header. */\n#define GRENACHE_VERSION_PATCH {patch}\n\
         /** The version of this header as a string. */\n#define GRENACHE_VERSION_STRING \"{version}\"\n"
    ));
    let bindings = cbindgen::Builder::new().with_crate(ffi).with_config(config).generate().map_err(|e| format!("cbindgen: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    Ok(out)
}
