//! The C examples are the C tests: each is compiled with `-Wall -Wextra -Werror -pedantic`
//! against the freshly built `libgrenache.so`, run, and run again under AddressSanitizer and
//! under valgrind (`--leak-check=full --error-exitcode=1`).

mod support;

use grenache_test_certs as tls_certs;

use support::{Flavor, run_example};

#[test]
fn basics_runs() {
    run_example("basics", Flavor::Plain, &[], &[]);
}

#[test]
fn basics_under_asan() {
    run_example("basics", Flavor::Asan, &[], &[]);
}

#[test]
fn basics_under_valgrind() {
    run_example("basics", Flavor::Valgrind, &[], &[]);
}

#[test]
fn rpc_server_and_client_run() {
    support::run_rpc_pair(Flavor::Plain);
}

#[test]
fn rpc_server_and_client_under_asan() {
    support::run_rpc_pair(Flavor::Asan);
}

#[test]
fn rpc_server_and_client_under_valgrind() {
    support::run_rpc_pair(Flavor::Valgrind);
}

fn put_get(flavor: Flavor) {
    let net = support::GrapeNet::start(true);
    let out = run_example("put_get", flavor, &[&net.urls[0]], &[]);
    assert!(out.contains("hello world") && out.contains("mutable hello"), "{out}");
}

#[test]
fn put_get_runs() {
    put_get(Flavor::Plain);
}

#[test]
fn put_get_under_asan() {
    put_get(Flavor::Asan);
}

#[test]
fn put_get_under_valgrind() {
    put_get(Flavor::Valgrind);
}

#[test]
fn rpc_over_ws_runs() {
    support::run_rpc_pair_on(Flavor::Plain, "ws");
}

#[test]
fn rpc_over_ws_under_asan() {
    support::run_rpc_pair_on(Flavor::Asan, "ws");
}

#[test]
fn rpc_over_ws_under_valgrind() {
    support::run_rpc_pair_on(Flavor::Valgrind, "ws");
}

#[test]
fn pubsub_runs() {
    support::run_pubsub_pair(Flavor::Plain);
}

#[test]
fn pubsub_over_zmq_runs() {
    support::run_pubsub_pair_over(Flavor::Plain, "zmq");
}

#[test]
fn pubsub_under_asan() {
    support::run_pubsub_pair(Flavor::Asan);
}

#[test]
fn pubsub_under_valgrind() {
    support::run_pubsub_pair(Flavor::Valgrind);
}

// Our own Grapes, started from C (no Node process involved).

#[test]
fn local_network_runs() {
    let out = run_example("local_network", Flavor::Plain, &[], &[]);
    assert!(out.contains("rpc_test hello -> \"world\""), "{out}");
    assert!(out.contains("seq 2 with cas 7: ERR_CAS_MISMATCH; seq 2 with cas 1: OK"), "{out}");
    assert!(out.contains("grape event: listening") && out.contains("grape event: ready"), "{out}");
}

#[test]
fn local_network_over_zmq_runs() {
    let out = run_example("local_network", Flavor::Plain, &["zmq"], &[]);
    assert!(out.contains("rpc_test hello -> \"world\""), "{out}");
}

#[test]
fn local_network_over_zmq_under_asan() {
    run_example("local_network", Flavor::Asan, &["zmq"], &[]);
}

#[test]
fn local_network_under_asan() {
    run_example("local_network", Flavor::Asan, &[], &[]);
}

#[test]
fn local_network_under_valgrind() {
    run_example("local_network", Flavor::Valgrind, &[], &[]);
}

/// Writes a fresh PKI (made now, never committed) into a directory of its own and returns it with
/// the allowed client's SHA-1 fingerprint.
fn whitelist_certs(tag: &str) -> (std::path::PathBuf, String) {
    let pki = tls_certs::RcgenCa::pki("grenache-c-whitelist");
    let dir = support::lib_dir().parent().expect("profile").join(format!("c-examples/certs-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, text) in [
        ("ca.pem", &pki.ca.cert_pem),
        ("server.pem", &pki.server.cert_pem),
        ("server.key", &pki.server.key_pem),
        ("client.pem", &pki.client.cert_pem),
        ("client.key", &pki.client.key_pem),
        ("other.pem", &pki.client2.cert_pem),
        ("other.key", &pki.client2.key_pem),
    ] {
        std::fs::write(dir.join(name), text).expect("write pem");
    }
    let der = grenache_core::tls::certs_from_pem(pki.client.cert_pem.as_bytes()).expect("pem");
    (dir, grenache_core::tls::fingerprint_sha1(&der[0]))
}

fn wss_whitelist(flavor: Flavor, tag: &str) {
    let (dir, fp) = whitelist_certs(tag);
    let out = run_example("wss_whitelist", flavor, &[dir.to_str().expect("utf8 path"), &fp], &[]);
    assert!(out.contains("wss_whitelist: ok"), "{out}");
    assert!(out.contains(&format!("verify_client {fp} from 127.0.0.1:")), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wss_whitelist_runs() {
    wss_whitelist(Flavor::Plain, "plain");
}

#[test]
fn wss_whitelist_under_asan() {
    wss_whitelist(Flavor::Asan, "asan");
}

#[test]
fn wss_whitelist_under_valgrind() {
    wss_whitelist(Flavor::Valgrind, "vg");
}

#[test]
fn rpc_bench_runs_over_http_and_ws() {
    let net = support::GrapeNet::start(false);
    for t in ["http", "ws"] {
        let out = run_example("rpc_bench", Flavor::Plain, &[&net.urls[0], t, "300", "20", &format!("bench_{t}")], &[]);
        assert!(out.contains("\"failed\":0"), "{out}");
    }
}

/// The header compiles cleanly as C99, C11 and C++17 (cbindgen's `cpp_compat`).
#[test]
fn header_compiles_as_c99_c11_and_cpp17() {
    let dir = support::lib_dir().parent().expect("profile").join("c-examples");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let c_src = dir.join("header_check.c");
    std::fs::write(&c_src, "#include \"grenache.h\"\nint main(void) { return GRENACHE_RESULT_OK; }\n").expect("write");
    let cpp_src = dir.join("header_check.cpp");
    std::fs::write(
        &cpp_src,
        "#include \"grenache.h\"\nint main() { grenache_runtime *rt = nullptr; (void)rt; return GRENACHE_RESULT_OK; }\n",
    )
    .expect("write");
    let include = support::root().join("include");
    for (cc, std, src) in [("cc", "-std=c99", &c_src), ("cc", "-std=c11", &c_src), ("c++", "-std=c++17", &cpp_src)] {
        let o = std::process::Command::new(cc)
            .args([std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
            .arg(&include)
            .arg(src)
            .output()
            .unwrap_or_else(|e| panic!("{cc} not found (scripts/test.sh installs gcc and g++): {e}"));
        assert!(o.status.success(), "{cc} {std}: {}", String::from_utf8_lossy(&o.stderr));
    }
}
