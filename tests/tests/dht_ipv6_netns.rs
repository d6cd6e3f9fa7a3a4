//! Grapes on hosts that have IPv6 addresses only: 3 `grape` processes with their default DHT
//! settings (dual-stack where the host has IPv6), each in a network namespace of its own on one
//! bridge (in a 4th namespace: nothing is added to the host's own network), with no IPv4 address
//! but loopback. Bootstrapped as a chain over IPv6, they form one network: a service announced
//! through the last Grape is found through the first as `[fd77::3]:port`.
//!
//! Needs root and `ip` (iproute2; scripts/test.sh installs it). Every namespace (and with it every
//! veth and the bridge) and every process is removed by a guard, also when the test fails. Builds
//! the `grape` binary first (debug profile).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use grenache_e2e::bridge::Bridge;
use grenache_e2e::grapes::{self, grape_bin};
use tokio::net::TcpStream;

const N: usize = 3;
const DHT_PORT: u16 = 20001;
const API_PORT: u16 = 30001;

/// Grape `i` is fd77::(i+1); the hub is fd77::fe.
fn ip(i: usize) -> String {
    format!("fd77::{}", i + 1)
}

/// Starts `grape` on host `i` with the default DHT settings, its API on `[::]`, bootstrapped
/// from Grape `i - 1` over IPv6.
fn start_grape(net: &mut Bridge, i: usize) {
    let boot = if i == 0 { String::new() } else { format!("[{}]:{DHT_PORT}", ip(i - 1)) };
    let (dp, ap) = (DHT_PORT.to_string(), API_PORT.to_string());
    net.spawn(i, &grape_bin(), &["--dp", &dp, "--aph", &ap, "-b", "::", "--bn", &boot, "--log-level", "warn"]);
}

fn api(i: usize) -> SocketAddr {
    format!("[{}]:{API_PORT}", ip(i)).parse().expect("address")
}

async fn scenario() {
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..N {
        while TcpStream::connect(api(i)).await.is_err() {
            assert!(Instant::now() < deadline, "grape {i} never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("APIs listening after {:?}", t0.elapsed());
    let want = vec![format!("[{}]:7000", ip(N - 1))];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acks = grapes::announce(api(N - 1), "v6ns:svc", 7000).await;
        let found = grapes::lookup(api(0), "v6ns:svc").await;
        if found == want {
            eprintln!("announced ({acks} nodes) and found across IPv6-only hosts after {:?}", t0.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "not found through grape 0: {found:?} (announce: {acks})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(grapes::lookup(api(1), "v6ns:svc").await, want);
}

#[test]
fn grapes_on_ipv6_only_hosts_form_a_network() {
    let hosts: Vec<String> = (0..N).map(|i| format!("{}/64", ip(i))).collect();
    let mut net = Bridge::build('6', "fd77::fe/64", &hosts);
    for i in 0..N {
        start_grape(&mut net, i);
    }
    net.run_in_hub(|_, rt| rt.block_on(scenario()));
}
