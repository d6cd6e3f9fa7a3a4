//! DHT maintenance cost: datagrams each DHT node sends per second when nobody uses the network,
//! ours beside the Node reference (bittorrent-dht 10.0.0, what Node Grapes run), same run.
//!
//! `cargo run --release -p grenache-bench --bin dht_maint_bench [-- --sizes 10,100 --join 30 --steady 60]`
//!
//! For each size, both networks are wired as a chain (node i bootstraps from node i-1 only: the
//! case that never heals in the reference) with every node on 127.0.0.1: ours in this process
//! (bare `Dht` nodes: the Grape's HTTP side sends nothing), Node's in one child process
//! (`tests/interop/dht_maint_net.js`, which counts every datagram its sockets send). Counted:
//! every datagram sent (queries and replies) in the `--join` seconds after the last node started
//! (while tables fill and ours runs its fast refresh rounds), then in the `--steady` seconds after
//! that. Then 20 services are announced through nodes `7i mod n` and looked up through nodes
//! `7i + n/2 mod n`: how many are found says whether the tables healed.

use std::time::{Duration, Instant};

use grenache::dht::{Dht, DhtConfig};
use grenache_e2e::NodeProcess;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const PROBES: usize = 20;

struct Result {
    join_rate: f64,
    steady_rate: f64,
    found: usize,
    mean_table: f64,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn sent(nodes: &[Dht]) -> u64 {
    nodes
        .iter()
        .map(|d| {
            let s = d.stats();
            s.queries_sent + s.replies_sent
        })
        .sum()
}

async fn ours(n: usize, join: Duration, steady: Duration) -> Result {
    let mut nodes: Vec<Dht> = Vec::with_capacity(n);
    for i in 0..n {
        let bootstrap = if i == 0 { vec![] } else { vec![nodes[i - 1].local_addr().to_string()] };
        let cfg = DhtConfig { bind: "127.0.0.1:0".parse().expect("addr"), bootstrap, ..DhtConfig::default() };
        let d = Dht::bind(cfg).await.expect("bind");
        let _ = tokio::time::timeout(Duration::from_secs(5), d.ready()).await;
        nodes.push(d);
    }
    let s0 = sent(&nodes);
    let maint0: u64 = nodes.iter().map(|d| d.stats().maintenance_queries).sum();
    tokio::time::sleep(join).await;
    let s1 = sent(&nodes);
    tokio::time::sleep(steady).await;
    let s2 = sent(&nodes);
    let maint2: u64 = nodes.iter().map(|d| d.stats().maintenance_queries).sum();
    let mean_table = nodes.iter().map(|d| d.node_count() as f64).sum::<f64>() / n as f64;
    eprintln!("ours n={n}: maintenance queries {} of {} datagrams", maint2 - maint0, s2 - s0);
    let mut found = 0;
    let anns = (0..PROBES).map(|i| {
        let d = nodes[(i * 7) % n].clone();
        async move { d.announce(format!("maint:probe:{i}").as_bytes(), 9000 + i as u16).await }
    });
    futures_util::future::join_all(anns).await;
    let looks = (0..PROBES).map(|i| {
        let d = nodes[(i * 7 + n / 2) % n].clone();
        async move { d.lookup(format!("maint:probe:{i}").as_bytes()).await.unwrap_or_default().iter().any(|p| p.port() == 9000 + i as u16) }
    });
    for hit in futures_util::future::join_all(looks).await {
        found += usize::from(hit);
    }
    for d in &nodes {
        d.shutdown().await;
    }
    Result {
        join_rate: (s1 - s0) as f64 / join.as_secs_f64() / n as f64,
        steady_rate: (s2 - s1) as f64 / steady.as_secs_f64() / n as f64,
        found,
        mean_table,
    }
}

async fn reference(n: usize, join: Duration, steady: Duration) -> Result {
    let mut p = NodeProcess::spawn("dht_maint_net.js", &[&n.to_string()]);
    loop {
        let v = p.json(T).await;
        if v["event"] == "started" {
            break;
        }
    }
    async fn count(p: &mut NodeProcess) -> (u64, Vec<u64>) {
        p.send_line(r#"{"cmd":"count"}"#).await;
        loop {
            let v: Value = p.json(T).await;
            if let Some(s) = v["sent"].as_u64() {
                let tables = v["nodes"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
                return (s, tables);
            }
        }
    }
    let (s0, _) = count(&mut p).await;
    tokio::time::sleep(join).await;
    let (s1, _) = count(&mut p).await;
    tokio::time::sleep(steady).await;
    let (s2, tables) = count(&mut p).await;
    p.send_line(&format!(r#"{{"cmd":"probe","services":{PROBES}}}"#)).await;
    let found = loop {
        let v = p.json(T).await;
        if let Some(f) = v["found"].as_u64() {
            break f as usize;
        }
    };
    Result {
        join_rate: (s1 - s0) as f64 / join.as_secs_f64() / n as f64,
        steady_rate: (s2 - s1) as f64 / steady.as_secs_f64() / n as f64,
        found,
        mean_table: tables.iter().sum::<u64>() as f64 / tables.len().max(1) as f64,
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = arg("--sizes").unwrap_or_else(|| "10,100".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let join = Duration::from_secs(arg("--join").and_then(|s| s.parse().ok()).unwrap_or(30));
    let steady = Duration::from_secs(arg("--steady").and_then(|s| s.parse().ok()).unwrap_or(60));
    let started = Instant::now();
    // Every network runs at once (counts do not depend on speed), each size's pair side by side.
    let runs = sizes.iter().map(|&n| async move {
        let (o, r) = tokio::join!(ours(n, join, steady), reference(n, join, steady));
        (n, o, r)
    });
    let results = futures_util::future::join_all(runs).await;
    println!(
        "\nDHT maintenance, chain-wired networks, datagrams sent per node per second (join: first {}s after the last start; steady: the {}s after)",
        join.as_secs(),
        steady.as_secs()
    );
    println!("{:<10} {:>6} {:>12} {:>12} {:>12} {:>14}", "impl", "nodes", "join msg/s", "steady msg/s", "mean table", "found of 20");
    for (n, o, r) in &results {
        for (name, x) in [("ours", o), ("node ref", r)] {
            println!("{:<10} {:>6} {:>12.2} {:>12.2} {:>12.1} {:>14}", name, n, x.join_rate, x.steady_rate, x.mean_table, x.found);
        }
    }
    println!("(total {:?})", started.elapsed());
}
