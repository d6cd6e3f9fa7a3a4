//! The DHT at 1,000 and 10,000 nodes: our DHT node code over an in-memory network on a virtual
//! clock (`grenache::dht::sim`: latency fixed per link, loss per datagram, no sockets, no
//! sleeping), with churn. Prints, per size: lookup success before, during and after churn, hops
//! p50/p90/p99, messages per lookup, lookup time (virtual), maintenance messages per node per
//! second, memory and time taken; beside them what Kademlia predicts for the hops.
//!
//! `cargo run --release -p grenache-bench --bin dht_sim -- --nodes 1000`
//!
//! Options: `--nodes N[,N...]` (default 1000; several sizes run one after the other), `--churn F`
//! (fraction replaced, default 0.333), `--lookups L` (per phase, default 200), `--services S`
//! (default 20), `--loss F` (default 0.01), `--latency LO-HI` (one-way ms, default 10-200),
//! `--join-rate R` (nodes started per virtual second, default 100), `--seed S` (default 1).
//! Peak memory is the process's (VmHWM): run the largest size alone to read its cost.

use std::time::{Duration, Instant};

use grenache::dht::routing::K;
use grenache::dht::sim::{self, Report, Scenario};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    match arg(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("dht_sim: bad value for {name}: {v}");
            std::process::exit(2)
        }),
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let sizes: Vec<usize> = arg("--nodes")
        .unwrap_or_else(|| "1000".into())
        .split(',')
        .map(|s| {
            s.trim().parse().unwrap_or_else(|_| {
                eprintln!("dht_sim: --nodes takes sizes like 1000 or 10,100,1000");
                std::process::exit(2)
            })
        })
        .collect();
    let latency = arg("--latency").unwrap_or_else(|| "10-200".into());
    let (lo, hi) = latency.split_once('-').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))).unwrap_or_else(|| {
        eprintln!("dht_sim: --latency takes LO-HI in ms, e.g. 10-200");
        std::process::exit(2)
    });
    let mut rows: Vec<(Report, Duration, u64)> = Vec::new();
    for &n in &sizes {
        let mut s = Scenario::new(n);
        s.churn = parse("--churn", 1.0 / 3.0);
        s.lookups = parse("--lookups", 200);
        s.services = parse("--services", 20);
        s.join_per_sec = parse("--join-rate", 100.0);
        s.seed = parse("--seed", 1);
        s.net.loss = parse("--loss", 0.01);
        s.net.latency_ms = (lo, hi);
        s.net.seed = s.seed;
        eprintln!("dht_sim: {n} nodes ...");
        let t0 = Instant::now();
        let r = match sim::run_blocking(&s) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("dht_sim: cannot build the runtime: {e}");
                std::process::exit(1)
            }
        };
        let real = t0.elapsed();
        let hwm = status_kib("VmHWM:");
        println!("--- {n} nodes (seed {}, churn {:.3}, loss {}, latency {lo}-{hi} ms one way)", s.seed, s.churn, s.net.loss);
        print!("{}", r.summary());
        println!("real time {:.1} s, peak RSS {} MiB", real.as_secs_f64(), hwm / 1024);
        rows.push((r, real, hwm));
    }
    println!();
    println!(
        "| nodes | replaced | found before / during / after churn | hops p50/p90/p99 (after) | log2(n) | est. hops | queries/lookup (mean, p99) | first peers p50/p99 | lookup end p50/p99 | maint. msgs/node/s join / steady | peak RSS | virtual / real time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (r, real, hwm) in &rows {
        let n = r.nodes as f64;
        // Kademlia with b = 1 (BEP 5): O(log2 n) hops. With K-node buckets each hop gains about
        // 1 + log2(K) bits, and a record sits on the K closest nodes (log2(n/K) bits to match):
        // about log2(n/K) / (1 + log2 K) hops, at least 1 (see docs/dht-sim.md).
        let kf = K as f64;
        let est = ((n / kf).max(1.0).log2() / (1.0 + kf.log2())).max(1.0);
        let a = &r.after;
        println!(
            "| {} | {} | {:.1} % / {:.1} % / {:.1} % | {}/{}/{} | {:.1} | {:.1} | {:.1}, {} | {}/{} ms | {}/{} ms | {:.2} / {:.2} | {} MiB | {:.0} s / {:.0} s |",
            r.nodes,
            r.replaced,
            100.0 * r.before.success_rate(),
            100.0 * r.during.success_rate(),
            100.0 * a.success_rate(),
            sim::quantile(&a.hops, 0.5),
            sim::quantile(&a.hops, 0.9),
            sim::quantile(&a.hops, 0.99),
            n.log2(),
            est,
            sim::mean(&a.queries),
            sim::quantile(&a.queries, 0.99),
            sim::quantile(&a.first_ms, 0.5),
            sim::quantile(&a.first_ms, 0.99),
            sim::quantile(&a.latency_ms, 0.5),
            sim::quantile(&a.latency_ms, 0.99),
            r.join_msgs_per_node_sec,
            r.steady_msgs_per_node_sec,
            hwm / 1024,
            r.virtual_time.as_secs_f64(),
            real.as_secs_f64(),
        );
    }
}
