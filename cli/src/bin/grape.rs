//! `grape`: run a Grape (DHT node + HTTP API).
//!
//! Flags follow the reference `grape` CLI (grenache-grape 1.0.0), with its documented defaults
//! rather than the 1.0.0 CLI's accidental ones (which switched off expiry and the size limit):
//!
//! ```text
//! grape --dp 20001 --aph 30001 --bn '127.0.0.1:20002,127.0.0.1:20003'
//! ```
//!
//! Exit codes: 0 after a clean stop (Ctrl-C / SIGTERM), 1 for a bad flag or a busy port.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

#[path = "../trim.rs"]
mod trim;

use clap::Parser;
use grenache::grape::{Grape, GrapeConfig, GrapeEvent};

/// Run a Grape: a Grenache DHT node plus its HTTP API.
#[derive(Debug, Parser)]
#[command(name = "grape", version)]
struct Cli {
    /// UDP port of the DHT node.
    #[arg(long = "dp", visible_alias = "dht_port", value_name = "PORT", default_value_t = 20001)]
    dht_port: u16,

    /// TCP port of the HTTP API (required).
    #[arg(long = "aph", visible_alias = "api_port", value_name = "PORT")]
    api_port: u16,

    /// Bootstrap DHT nodes, comma-separated `host:port` (may be '').
    #[arg(long = "bn", visible_alias = "bootstrap", value_name = "LIST", default_value = "")]
    bootstrap: String,

    /// Address the HTTP API binds to (and the host stored for this Grape's own announces).
    #[arg(short = 'b', long = "bind", alias = "b", value_name = "IP")]
    bind: Option<IpAddr>,

    /// How long an announced service is kept, in milliseconds.
    #[arg(long = "dpa", visible_alias = "dht_peer_maxAge", value_name = "MS", default_value_t = 120_000)]
    peer_max_age: u64,

    /// Routing-table liveness period, in milliseconds.
    #[arg(long = "dnl", visible_alias = "dht_nodeLiveness", value_name = "MS", default_value_t = 300_000)]
    node_liveness: u64,

    /// LRU size of the per-target closest-node tables.
    #[arg(long = "dht_maxTables", value_name = "N", default_value_t = 5000)]
    max_tables: usize,

    /// LRU size of the BEP44 value store.
    #[arg(long = "dht_maxValues", value_name = "N", default_value_t = 5000)]
    max_values: usize,

    /// Upper bound on announced peers stored, over all names.
    #[arg(long = "dht_maxPeers", value_name = "N", default_value_t = 1_000_000)]
    max_peers: usize,

    /// Largest accepted HTTP body in bytes (0: no limit).
    #[arg(long = "check_maxPayloadSize", value_name = "BYTES", default_value_t = 8192)]
    max_payload: usize,

    /// Address the DHT's UDP socket binds to (the reference binds all interfaces, whatever -b).
    /// An IPv6 address (`::`, `::1`) makes the DHT IPv6-only.
    #[arg(long = "dht-bind", value_name = "IP", default_value = "0.0.0.0")]
    dht_bind: IpAddr,

    /// Run the DHT dual-stack with its IPv6 socket on this address (BEP 32); the Grape does not
    /// start if it cannot be bound. Default: `::` beside `--dht-bind 0.0.0.0` where the host has
    /// IPv6, IPv4 only otherwise.
    #[arg(long = "dht-bind6", value_name = "IPV6", conflicts_with = "no_ipv6")]
    dht_bind6: Option<std::net::Ipv6Addr>,

    /// Run the DHT over IPv4 only (no IPv6 socket beside `--dht-bind`).
    #[arg(long = "no-ipv6")]
    no_ipv6: bool,

    /// On a dual-stack DHT, announce services over IPv6 too (for services listening on IPv6).
    #[arg(long = "announce-ipv6")]
    announce_ipv6: bool,

    /// Most HTTP connections served at once; further ones are closed at once.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 10_000)]
    max_connections: usize,

    /// Most HTTP connections one source IP address holds at once.
    #[arg(long = "max-connections-per-ip", value_name = "N", default_value_t = 2_000)]
    max_connections_per_ip: usize,

    /// Milliseconds an HTTP client has to send a request's head.
    #[arg(long = "header-timeout", value_name = "MS", default_value_t = 10_000)]
    header_timeout: u64,

    /// Milliseconds an HTTP client has to send a request's whole body.
    #[arg(long = "body-timeout", value_name = "MS", default_value_t = 10_000)]
    body_timeout: u64,

    /// Bytes per second a body must come at, on average, after its first 5 s (0: any).
    #[arg(long = "body-min-rate", value_name = "BYTES", default_value_t = 4096)]
    body_min_rate: u64,

    /// Milliseconds an idle keep-alive HTTP connection is kept.
    #[arg(long = "idle-timeout", value_name = "MS", default_value_t = 5_000)]
    idle_timeout: u64,

    /// Longest service name (DHT key) stored or looked up, in bytes.
    #[arg(long = "max-key-len", value_name = "BYTES", default_value_t = 256)]
    max_key_len: usize,

    /// Most bytes the peer store holds (keys and records).
    #[arg(long = "peer-store-bytes", value_name = "BYTES", default_value_t = 64 << 20)]
    peer_store_bytes: usize,

    /// Most peer records one IP address has in the peer store.
    #[arg(long = "max-records-per-ip", value_name = "N", default_value_t = 10_000)]
    max_records_per_ip: usize,

    /// KRPC queries one IP address may send per second (bursts of twice as many; 0: any).
    #[arg(long = "queries-per-ip", value_name = "N", default_value_t = 500.0)]
    queries_per_ip: f64,

    /// Accepted for compatibility and ignored (the reference never used it either).
    #[arg(long = "dc", visible_alias = "dht_concurrency", value_name = "N")]
    dht_concurrency: Option<u64>,

    /// Accepted for compatibility and ignored (the reference never used it either).
    #[arg(long = "cache_maxAge", value_name = "MS")]
    cache_max_age: Option<u64>,

    /// File that keeps the DHT node's id and good routing-table nodes across restarts: read at
    /// start (so the Grape rejoins without bootstrap nodes), written at stop and every minute.
    #[arg(long = "dht-state", visible_alias = "dht_state", value_name = "FILE")]
    dht_state: Option<std::path::PathBuf>,

    /// Log level: error, warn, info, debug, trace, or a tracing filter. Default: RUST_LOG, else info.
    #[arg(long = "log-level", value_name = "LEVEL")]
    log_level: Option<String>,
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn config_from(cli: &Cli) -> GrapeConfig {
    let mut c = GrapeConfig::default();
    c.dht_port(cli.dht_port)
        .api_port(cli.api_port)
        .bootstrap(cli.bootstrap.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        .host(cli.bind)
        .peer_max_age(Duration::from_millis(cli.peer_max_age))
        .node_liveness(Duration::from_millis(cli.node_liveness))
        .max_tables(cli.max_tables)
        .max_values(cli.max_values)
        .max_peers(cli.max_peers)
        .check_max_payload_size(if cli.max_payload == 0 { usize::MAX } else { cli.max_payload })
        .dht_bind(cli.dht_bind)
        .dht_ipv6(match (cli.no_ipv6, cli.dht_bind6) {
            (true, _) => grenache::grape::DhtIpv6::Off,
            (false, Some(ip)) => grenache::grape::DhtIpv6::Bind(ip),
            (false, None) => grenache::grape::DhtIpv6::Auto,
        })
        .announce_ipv6(cli.announce_ipv6)
        .max_connections(cli.max_connections)
        .max_connections_per_ip(cli.max_connections_per_ip)
        .read_deadlines(grenache::transport::ReadDeadlines {
            header: Duration::from_millis(cli.header_timeout),
            body: Duration::from_millis(cli.body_timeout),
            body_min_rate: cli.body_min_rate,
            idle: Duration::from_millis(cli.idle_timeout),
            ..Default::default()
        })
        .dht_limits(grenache::dht::limits::DhtLimits {
            peer_store: grenache::dht::limits::PeerStoreLimits {
                max_key_len: cli.max_key_len,
                max_bytes: cli.peer_store_bytes,
                max_per_source: cli.max_records_per_ip,
            },
            queries_per_second: cli.queries_per_ip,
            query_burst: (cli.queries_per_ip * 2.0).max(1.0),
            ..Default::default()
        })
        .dht_state(cli.dht_state.clone());
    c
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.log_level.as_deref());
    trim::start();
    if cli.dht_concurrency.is_some() {
        tracing::warn!("--dc/--dht_concurrency is accepted for compatibility and ignored");
    }
    if cli.cache_max_age.is_some() {
        tracing::warn!("--cache_maxAge is accepted for compatibility and ignored");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("grape: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let grape = match Grape::start(config_from(&cli)).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("grape: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(dht = %grape.dht_addr(), api = %grape.api_addr(), "grape listening");
        let mut events = grape.events();
        let log_events = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(GrapeEvent::Ready) => tracing::info!("dht ready"),
                    Ok(GrapeEvent::Announce(name)) => tracing::debug!(%name, "announce stored"),
                    Ok(GrapeEvent::Peer(p)) => tracing::trace!(peer = %p, "peer found"),
                    Ok(GrapeEvent::Node) => tracing::trace!("node added"),
                    Ok(GrapeEvent::Warning(w)) => tracing::debug!(warning = %w, "dht warning"),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        shutdown_signal().await;
        tracing::info!("stopping");
        grape.stop().await;
        log_events.abort();
        ExitCode::SUCCESS
    })
}
