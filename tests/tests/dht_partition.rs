//! A split network heals by itself: 10 `grape` processes, each in a network namespace of its
//! own on one bridge (in an 11th namespace: nothing is added to the host's own network), wired
//! as a chain. The two halves are cut apart for 30 s with iptables DROP rules; services are
//! announced on both sides meanwhile; after the rules are removed, every service must be found
//! from the other half within [`HEAL_BOUND`], with no operator action.
//!
//! Needs root, `ip` (iproute2) and `iptables` (scripts/test.sh installs them). Every namespace
//! (and with it every veth, the bridge and the rules) and every process is removed by a guard,
//! also when the test fails. Builds the `grape` binary first (debug profile).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use grenache_e2e::bridge::{Bridge, sh};
use grenache_e2e::grapes::{self, grape_bin};
use tokio::net::TcpStream;

/// How long the halves are cut apart.
const CUT: Duration = Duration::from_secs(30);
/// The stated bound: after the join, every service announced during the cut is found from the
/// other half within this long. A silent node is retried at most 15 s apart (one retry per
/// second overall), a KRPC query times out after 2 s, then one refresh round and one lookup walk.
/// Measured: 0.02-1.1 s. Without the retries of silent nodes the halves never find each other
/// again (0 of 10 services found across 45 s after the join).
const HEAL_BOUND: Duration = Duration::from_secs(45);
const N: usize = 10;
const DHT_PORT: u16 = 20001;
const API_PORT: u16 = 30001;

/// The A half (0..5) is 10.77.0.1-5, the B half (5..10) 10.77.0.65-69; the hub is .254.
fn ip(i: usize) -> String {
    if i < N / 2 { format!("10.77.0.{}", 1 + i) } else { format!("10.77.0.{}", 65 + i - N / 2) }
}

/// The other half's addresses, as one iptables source.
fn other_half(i: usize) -> &'static str {
    if i < N / 2 { "10.77.0.64/26" } else { "10.77.0.0/26" }
}

/// Starts `grape` on host `i`, bootstrapped from Grape `i - 1` (a chain).
fn start_grape(net: &mut Bridge, i: usize) {
    let boot = if i == 0 { String::new() } else { format!("{}:{DHT_PORT}", ip(i - 1)) };
    let (dp, ap) = (DHT_PORT.to_string(), API_PORT.to_string());
    net.spawn(i, &grape_bin(), &["--dp", &dp, "--aph", &ap, "--bn", &boot, "--log-level", "warn"]);
}

/// Cuts (true) or joins (false) the halves: a DROP rule in every host for packets from the
/// other half.
fn cut(net: &Bridge, on: bool) {
    for i in 0..N {
        let op = if on { "-I" } else { "-D" };
        sh(&["ip", "netns", "exec", &net.ns(i), "iptables", op, "INPUT", "-s", other_half(i), "-j", "DROP"]);
    }
}

fn api(i: usize) -> SocketAddr {
    format!("{}:{API_PORT}", ip(i)).parse().expect("address")
}

async fn announce(i: usize, name: &str, port: u16) {
    grapes::announce(api(i), name, port).await;
}

async fn lookup(i: usize, name: &str) -> Vec<String> {
    grapes::lookup(api(i), name).await
}

/// Announces `<prefix>:<i>` on every Grape, then looks each one up through the Grape five
/// places on (the other half); returns which were found.
async fn round(prefix: &str) -> Vec<bool> {
    futures_util::future::join_all((0..N).map(|i| async move { announce(i, &format!("{prefix}:{i}"), 7000 + i as u16).await })).await;
    futures_util::future::join_all((0..N).map(|i| async move {
        let want = format!("{}:{}", ip(i), 7000 + i);
        lookup((i + N / 2) % N, &format!("{prefix}:{i}")).await.contains(&want)
    }))
    .await
}

async fn scenario(net: &Bridge) {
    // every API answers
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..N {
        while TcpStream::connect(api(i)).await.is_err() {
            assert!(Instant::now() < deadline, "grape {i} never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let t = Instant::now();
    // the chain heals into one network
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = round("before").await;
        if found.iter().all(|f| *f) {
            break;
        }
        assert!(Instant::now() < deadline, "the network never formed: {found:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("network formed in {:?}", t.elapsed());
    // cut apart; services announced on both sides meanwhile are not found across
    cut(net, true);
    let cut_at = Instant::now();
    while cut_at.elapsed() < CUT {
        let found = round("split").await;
        assert!(found.iter().all(|f| !*f), "found across the cut: {found:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // joined again: found across within the bound
    cut(net, false);
    let joined = Instant::now();
    loop {
        let found = round("split").await;
        if found.iter().all(|f| *f) {
            eprintln!("partition healed: every service found across {:?} after the join", joined.elapsed());
            break;
        }
        assert!(joined.elapsed() < HEAL_BOUND, "not healed {:?} after the join: {found:?}", joined.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[test]
fn split_network_heals_after_the_join() {
    let hosts: Vec<String> = (0..N).map(|i| format!("{}/24", ip(i))).collect();
    let mut net = Bridge::build('g', "10.77.0.254/24", &hosts);
    for i in 0..N {
        start_grape(&mut net, i);
        std::thread::sleep(Duration::from_millis(100));
    }
    net.run_in_hub(|net, rt| rt.block_on(scenario(net)));
}
