//! A DHT that heals itself: mixed networks of Rust Grapes and Node reference Grapes
//! (grenache-grape 1.0.0) wired as a chain, a ring and a random tree, each Grape bootstrapped
//! from one other only and all started at once (as a compose file does: a Grape's bootstrap node
//! may not be up yet); every service must be found from the other kind of Grape within 30 s of
//! the last start. Without the routing-table maintenance these find 0-8 of 12 or 20. And a Grape
//! restarted from its saved DHT state with no bootstrap list serves lookups at once.
//!
//! Needs `npm ci --prefix tests/interop` (scripts/test.sh does it). Everything binds 127.0.0.1.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use grenache::grape::{Grape, GrapeConfig};
use grenache_e2e::free_port;
use grenache_e2e::grapes::{NodeGrape, T, announce, local, lookup};
use serde_json::{Value, json};

/// The bound the issue sets: every service found within this long after the last Grape started.
const CONVERGE: Duration = Duration::from_secs(30);

/// One Grape of a test network: ours (in process) or a Node reference Grape (a child process).
enum Member {
    Ours(Grape),
    Node(Box<NodeGrape>),
}

impl Member {
    fn dht(&self) -> SocketAddr {
        match self {
            Member::Ours(g) => local(g.dht_addr().port()),
            Member::Node(g) => g.dht,
        }
    }
    fn api(&self) -> SocketAddr {
        match self {
            Member::Ours(g) => local(g.api_addr().port()),
            Member::Node(g) => g.api,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Member::Ours(_) => "rust",
            Member::Node(_) => "node",
        }
    }
}

/// A Rust Grape on `dht_port` (0: any); `None` when the port was taken meanwhile.
async fn start_ours(bootstrap: &[String], dht_port: u16) -> Option<Member> {
    let mut c = GrapeConfig::new();
    c.dht_bind([127, 0, 0, 1].into()).dht_port(dht_port).api_port(0).bootstrap(bootstrap.to_vec());
    match Grape::start(c).await {
        Ok(g) => Some(Member::Ours(g)),
        Err(e) => {
            eprintln!("rust grape failed on DHT port {dht_port}: {e}");
            None
        }
    }
}

/// A Node Grape: on `dht_port` once when it is promised to others (`None` when it was taken
/// meanwhile: [`start_network_of`] starts the whole network again), else on ports of its own.
async fn start_node(bootstrap: &[String], dht_port: Option<u16>) -> Option<Member> {
    let g = match dht_port {
        Some(p) => NodeGrape::start_on(p, bootstrap, &[]).await?,
        None => NodeGrape::start(bootstrap, &[]).await,
    };
    Some(Member::Node(Box::new(g)))
}

/// Starts `n` Grapes at once, as a compose file does (nobody waits for its bootstrap node to be
/// up and joined), alternating ours and Node's (`ours_first`); Grape `i` bootstraps from the
/// Grapes `boot(i)` (indexes). Every DHT port is picked beforehand.
async fn start_network(n: usize, ours_first: bool, boot: impl Fn(usize) -> Vec<usize>) -> (Vec<Member>, Instant) {
    start_network_of(n, |i| (i % 2 == 0) == ours_first, boot).await
}

/// [`start_network`] with the kind of each Grape chosen by `ours(i)`.
/// A Grape that lost its promised port to another program makes the whole network start again
/// on new ports (the others bootstrap from that port), up to 5 times.
async fn start_network_of(n: usize, ours: impl Fn(usize) -> bool, boot: impl Fn(usize) -> Vec<usize>) -> (Vec<Member>, Instant) {
    for attempt in 1..=5 {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let starts = (0..n).map(|i| {
            let bootstrap: Vec<String> = boot(i).into_iter().map(|j| local(ports[j]).to_string()).collect();
            let ours = ours(i);
            let port = ports[i];
            async move { if ours { start_ours(&bootstrap, port).await } else { start_node(&bootstrap, Some(port)).await } }
        });
        let started: Option<Vec<Member>> = futures_util::future::join_all(starts).await.into_iter().collect();
        match started {
            Some(members) => return (members, Instant::now()),
            None => eprintln!("a Grape lost its port, attempt {attempt} of 5: starting the network again"),
        }
    }
    panic!("could not start a network of {n} Grapes on free ports in 5 attempts")
}

/// Each Grape `i` announces `heal:<tag>:<i>`; every round all re-announce (as a Link does, on a
/// shorter period) and each service is looked up through Grape `i + shift` (an odd shift: the
/// other kind). Returns when all are found, or panics after [`CONVERGE`] from `t0`.
async fn all_found(members: &[Member], tag: &str, t0: Instant) -> Duration {
    let n = members.len();
    let shift = if (n / 2) % 2 == 1 { n / 2 } else { n / 2 + 1 };
    let names: Vec<String> = (0..n).map(|i| format!("heal:{tag}:{i}")).collect();
    let mut found = BTreeSet::new();
    loop {
        let anns = members.iter().zip(&names).enumerate().map(|(i, (m, name))| {
            let port = 10_000 + i as u16;
            async move { announce(m.api(), name, port).await }
        });
        futures_util::future::join_all(anns).await;
        let looks = (0..n).filter(|i| !found.contains(i)).map(|i| {
            let via = &members[(i + shift) % n];
            let name = &names[i];
            async move { (i, lookup(via.api(), name).await) }
        });
        for (i, peers) in futures_util::future::join_all(looks).await {
            if peers.contains(&format!("127.0.0.1:{}", 10_000 + i)) {
                found.insert(i);
            }
        }
        let elapsed = t0.elapsed();
        if found.len() == n {
            eprintln!("{tag}: {n} of {n} services found {elapsed:?} after the last start");
            return elapsed;
        }
        if elapsed > CONVERGE {
            let tables: Vec<String> = members
                .iter()
                .map(|m| match m {
                    Member::Ours(g) => g.dht().node_count().to_string(),
                    Member::Node(_) => "-".into(),
                })
                .collect();
            eprintln!("{tag}: routing-table sizes of ours: {}", tables.join(" "));
            let missing: Vec<String> = (0..n)
                .filter(|i| !found.contains(i))
                .map(|i| format!("{i} ({} via {} {})", members[i].kind(), members[(i + shift) % n].kind(), (i + shift) % n))
                .collect();
            panic!("{tag}: only {} of {n} services found after {elapsed:?}; missing: {}", found.len(), missing.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

async fn stop_all(members: Vec<Member>) {
    for m in members {
        if let Member::Ours(g) = m {
            g.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_of_20_mixed_grapes_finds_every_service_both_ways() {
    // 0 ours, 1 Node, 2 ours, ...; Grape i knows only Grape i-1.
    let (members, t0) = start_network(20, true, |i| if i == 0 { vec![] } else { vec![i - 1] }).await;
    all_found(&members, "chain", t0).await;
    stop_all(members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ring_of_12_mixed_grapes_finds_every_service_both_ways() {
    // Node first, so that the last Grape (whose port Grape 0 bootstraps from) is ours.
    let n = 12;
    let (members, t0) = start_network(n, false, |i| if i == 0 { vec![n - 1] } else { vec![i - 1] }).await;
    all_found(&members, "ring", t0).await;
    stop_all(members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_tree_of_12_mixed_grapes_finds_every_service_both_ways() {
    // Grape i bootstraps from one random earlier Grape (xorshift, seed printed for replay): ours
    // (even i) from any, Node's (odd i) from one of ours. Everything starts at once, and a
    // reference Grape whose bootstrap node is not up yet never tries it again: hung below another
    // Node Grape that started late, it and the Grapes below it would form an island that no
    // Grape knows a way into. Ours bind at once and retry their own bootstrap nodes.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    eprintln!("random tree seed {seed}");
    let parents: Vec<usize> = {
        let mut x = seed;
        (0..12usize)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match i {
                    0 => 0,
                    i if i % 2 == 0 => (x % i as u64) as usize,
                    // the even indexes below i: 0, 2, ..., i - 1
                    i => 2 * (x % i.div_ceil(2) as u64) as usize,
                }
            })
            .collect()
    };
    eprintln!("parents {parents:?}");
    let (members, t0) = start_network(12, true, |i| if i == 0 { vec![] } else { vec![parents[i]] }).await;
    all_found(&members, "tree", t0).await;
    stop_all(members).await;
}

/// Removes a temporary directory when dropped (also when the test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("grenache-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_grape_rejoins_from_its_saved_state_without_bootstrap() {
    let dir = TempDir::new("dht-state");
    let state = dir.0.join("grape.dht");
    // node0 <- ours1 <- node2 <- rejoiner (ours, with a state file)
    let mut members = vec![start_node(&[], None).await.expect("a Node grape")];
    members.push(start_ours(&[members[0].dht().to_string()], 0).await.expect("a Rust grape"));
    members.push(start_node(&[members[1].dht().to_string()], None).await.expect("a Node grape"));
    let mut c = GrapeConfig::new();
    c.dht_bind([127, 0, 0, 1].into()).dht_port(0).api_port(0).bootstrap(vec![members[2].dht().to_string()]).dht_state(Some(state.clone()));
    let g = Grape::start(c.clone()).await.expect("start");
    let old_id = g.dht().id();
    let dht_port = g.dht_addr().port();
    // a service announced through the first Node Grape, found through the rejoiner
    let deadline = Instant::now() + T;
    loop {
        announce(members[0].api(), "rejoin:svc", 4242).await;
        if lookup(local(g.api_addr().port()), "rejoin:svc").await.contains(&"127.0.0.1:4242".to_string()) && g.dht().node_count() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the network never formed (table {} nodes)", g.dht().node_count());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    g.stop().await;
    // the state file has our id and the three other Grapes; add a node that will not answer
    let text = std::fs::read_to_string(&state).expect("state file written on stop");
    let mut saved: Value = serde_json::from_str(&text).expect("state file is JSON");
    assert_eq!(saved["id"], json!(hex::encode(old_id)));
    let addrs: BTreeSet<String> =
        saved["nodes"].as_array().expect("nodes").iter().map(|n| n["addr"].as_str().unwrap_or("").to_string()).collect();
    for m in &members {
        assert!(addrs.contains(&m.dht().to_string()), "{} missing from the saved nodes {addrs:?}", m.dht());
    }

    // restart on the same port, no bootstrap list at all: the first lookup finds the service
    let mut c = GrapeConfig::new();
    c.dht_bind([127, 0, 0, 1].into()).dht_port(dht_port).api_port(0).dht_state(Some(state.clone()));
    let started = Instant::now();
    let g = Grape::start(c.clone()).await.expect("restart");
    let peers = lookup(local(g.api_addr().port()), "rejoin:svc").await;
    let took = started.elapsed();
    eprintln!("first lookup after the restart took {took:?}: {peers:?}");
    assert!(peers.contains(&"127.0.0.1:4242".to_string()), "the first lookup after the restart found {peers:?}");
    assert!(took < Duration::from_secs(2), "the first lookup after the restart took {took:?}");
    assert_eq!(g.dht().id(), old_id, "the id is kept across the restart");
    g.stop().await;

    // once more with a saved node that does not answer: it is dropped, the others stay
    let dead = local(free_port());
    saved["nodes"].as_array_mut().expect("nodes").push(json!({"id": "ab".repeat(20), "addr": dead.to_string()}));
    std::fs::write(&state, saved.to_string()).expect("rewrite state");
    let g = Grape::start(c).await.expect("restart");
    assert!(g.dht().nodes().iter().any(|n| n.addr == dead), "saved nodes are used at once");
    let deadline = Instant::now() + T;
    loop {
        let nodes: Vec<SocketAddr> = g.dht().nodes().iter().map(|n| n.addr).collect();
        if !nodes.contains(&dead) && members.iter().all(|m| nodes.contains(&m.dht())) {
            break;
        }
        assert!(Instant::now() < deadline, "routing table after restart: {nodes:?} (dead {dead})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a Node Grape still finds a service announced through the restarted Grape
    let deadline = Instant::now() + T;
    loop {
        announce(local(g.api_addr().port()), "rejoin:back", 4343).await;
        if lookup(members[0].api(), "rejoin:back").await.contains(&"127.0.0.1:4343".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "the Node grape never found the restarted grape's service");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    g.stop().await;
    stop_all(members).await;
}

#[tokio::test]
async fn a_malformed_state_file_is_reported_and_ignored() {
    let dir = TempDir::new("dht-state-bad");
    let state = dir.0.join("grape.dht");
    std::fs::write(&state, "{not json").expect("write");
    let mut c = GrapeConfig::new();
    c.dht_bind([127, 0, 0, 1].into()).dht_port(0).api_port(0).dht_state(Some(state.clone()));
    let g = Grape::start(c).await.expect("a bad state file does not stop the start");
    assert_eq!(g.dht().node_count(), 0);
    g.stop().await;
    // an empty table is not saved over the file
    assert_eq!(std::fs::read_to_string(&state).expect("read"), "{not json");
}
