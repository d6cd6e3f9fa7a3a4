//! The C examples are the C tests: each is compiled with `-Wall -Wextra -Werror -pedantic`
//! against the freshly built `libgrenache.so`, run, and run again under AddressSanitizer and
//! under valgrind (`--leak-check=full --error-exitcode=1`).

mod support;

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
}

#[test]
fn local_network_under_asan() {
    run_example("local_network", Flavor::Asan, &[], &[]);
}

#[test]
fn local_network_under_valgrind() {
    run_example("local_network", Flavor::Valgrind, &[], &[]);
}

#[test]
fn rpc_bench_runs_over_http_and_ws() {
    let net = support::GrapeNet::start(false);
    for t in ["http", "ws"] {
        let out = run_example("rpc_bench", Flavor::Plain, &[&net.urls[0], t, "300", "20", &format!("bench_{t}")], &[]);
        assert!(out.contains("\"failed\":0"), "{out}");
    }
}
