//! `grenache`: the command-line client of a Grape and of Grenache RPC services, and a transport
//! proxy (`grenache proxy`).
//!
//! Results are printed as JSON on stdout; errors go to stderr as `ERR_NAME: message`, and the
//! process exits with a code that tells the kind of failure:
//!
//! | code | meaning |
//! |---:|---|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | bad command line (clap) |
//! | 3 | timeout |
//! | 4 | connection failure (refused, closed, TLS handshake) |
//! | 5 | lookup found no peer (`ERR_GRAPE_LOOKUP_EMPTY`) |
//! | 6 | the remote handler answered an error (`ERR_REMOTE: <its message>`) |
//! | 7 | the Grape or the DHT answered an error |
//! | 8 | invalid input (bad JSON, bad key file, bad address) |
//! | 9 | hole punching found no open path to the peer (`ERR_PUNCH_TIMEOUT`, uTP) |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[path = "../trim.rs"]
mod trim;

use clap::{Args, Parser, Subcommand, ValueEnum};
use grenache::link::{DEFAULT_GRAPE, Keypair, Link, LinkConfig, MutableItem};
use grenache::pubsub::{PeerPub, PeerSub, PubConfig, SubConfig};
use grenache::rpc::{
    ClientTransport, Handler, PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, ServerTransport,
};
use grenache::tls::{ClientAuth, ClientTls, ServerTls};
use grenache::transport::utp::broker::{Broker, BrokerClient, BrokerClientConfig, BrokerConfig, DEFAULT_BROKER_NAME};
use grenache::transport::utp::{UtpClient, UtpClientConfig, UtpNode, UtpServer, UtpServerConfig};
use grenache::transport::{self, TransportKind};
use grenache::{Error, ErrorKind, Result};
use serde_json::{Value, json};

/// Command-line client for Grenache: Grape lookups and announces, DHT put/get, RPC requests, and
/// a small RPC server.
#[derive(Debug, Parser)]
#[command(name = "grenache", version, about)]
struct Cli {
    /// The Grape HTTP API to talk to.
    #[arg(long, global = true, default_value = DEFAULT_GRAPE)]
    grape: String,
    /// Timeout of each call to the Grape, in milliseconds.
    #[arg(long, global = true, default_value_t = 2500)]
    grape_timeout: u64,
    /// Use only addresses of the service with a valid signed proof under this ed25519 public key
    /// (64 hex characters; repeat it for two keys during a key rotation): lookup, request, map
    /// and sub. An address announced by anyone else is never used. See docs/signed-announce.md.
    #[arg(long = "service-key", global = true, value_name = "HEX")]
    service_keys: Vec<String>,
    /// Sign the announces (announce, serve, pub) with the key in this file (as written by
    /// `keygen`; repeat it to publish proofs under two keys during a rotation).
    #[arg(long = "sign-key", global = true, value_name = "FILE")]
    sign_keys: Vec<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Prints the addresses ("ip:port") announcing NAME, as a JSON array.
    Lookup {
        /// The service name.
        name: String,
    },
    /// Announces once that NAME is served on PORT of this host.
    Announce {
        /// The service name.
        name: String,
        /// The port.
        port: u16,
    },
    /// Removes the announce of NAME on PORT from the Grapes at once (grenache-rs Grapes) and
    /// prints how many DHT nodes removed it.
    Unannounce {
        /// The service name.
        name: String,
        /// The port.
        port: u16,
    },
    /// Sends JSON to one worker of NAME and prints its result.
    Request {
        /// The service name.
        name: String,
        /// The payload, as JSON (a bare word that is not JSON is sent as a string).
        json: String,
        #[command(flatten)]
        rpc: RpcOpts,
        /// Total attempts; each retry goes to another worker when there is one.
        #[arg(long, default_value_t = 1)]
        retry: u32,
        /// Also retry when the handler answers an error.
        #[arg(long)]
        retry_remote: bool,
        /// Send to this "ip:port" without a lookup.
        #[arg(long)]
        dest: Option<String>,
    },
    /// Sends JSON to every worker of NAME and prints their results as a JSON array.
    Map {
        /// The service name.
        name: String,
        /// The payload, as JSON.
        json: String,
        #[command(flatten)]
        rpc: RpcOpts,
        /// Ask at most this many random workers (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Serves NAME: echoes each payload back (or answers --reply), announced until Ctrl-C.
    Serve {
        /// The service name(s) to announce.
        #[arg(required = true)]
        names: Vec<String>,
        /// Port to listen on (0: any free port). The port is printed on start.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Answer every request with this JSON instead of echoing.
        #[arg(long)]
        reply: Option<String>,
        /// The transport.
        #[arg(long, value_enum, default_value_t = TransportChoice::Http)]
        transport: TransportChoice,
        /// Re-announce every this many milliseconds (jittered ±50 %).
        #[arg(long, default_value_t = 10_000)]
        interval: u64,
        /// Answer ERR_TIMEOUT when the handler takes longer (milliseconds).
        #[arg(long)]
        reply_timeout: Option<u64>,
        #[command(flatten)]
        tls: TlsOpts,
        #[command(flatten)]
        limits: LimitOpts,
        /// Require a client certificate signed by --tls-ca (HTTPS).
        #[arg(long)]
        require_client_cert: bool,
        /// On Ctrl-C or SIGTERM, shut down gracefully: stop announcing, unannounce (our Grapes drop
        /// the address at once), stop listening, finish the requests already received, then exit;
        /// close what is left after this many milliseconds.
        #[arg(long, default_value_t = 10_000)]
        grace: u64,
        /// uTP: also register the names with the broker announced as BROKER_NAME, on a timer, so
        /// clients behind other NATs can be introduced (both sides then punch at once).
        #[arg(long, value_name = "BROKER_NAME")]
        broker: Option<String>,
        /// uTP with --broker: re-register every this many milliseconds (keep it below the NAT's
        /// UDP timeout).
        #[arg(long, default_value_t = 5_000)]
        register_interval: u64,
        /// Answer `{"payload": <payload>, "remote": "<caller ip:port as seen here>"}` instead of
        /// the bare echo.
        #[arg(long)]
        with_remote: bool,
    },
    /// Runs a uTP broker: a rendezvous announced in the DHT that introduces clients to the
    /// workers of a service behind NATs (it records their external endpoints and tells both
    /// sides to punch). Runs until Ctrl-C or SIGTERM.
    Broker {
        /// The name to announce.
        #[arg(long, default_value = DEFAULT_BROKER_NAME)]
        name: String,
        /// UDP port to listen on (0: any free port). The port is printed on start.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Forget an entry not refreshed within this many milliseconds.
        #[arg(long, default_value_t = 30_000)]
        entry_ttl: u64,
        /// The most entries kept.
        #[arg(long, default_value_t = 10_000)]
        max_entries: usize,
    },
    /// Publishes each line of stdin to every subscriber of NAME: a WebSocket publisher (PUB/SUB,
    /// grenache-nodejs-ws wire) or a ZeroMQ one, announced until stdin ends or Ctrl-C.
    Pub {
        /// The channel name to announce.
        name: String,
        /// Port to listen on (0: any free port). The port is printed on start.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Re-announce every this many milliseconds (jittered ±50 %).
        #[arg(long, default_value_t = 10_000)]
        interval: u64,
        /// Wait (up to 60 s) for this many subscribers before reading stdin.
        #[arg(long, default_value_t = 0)]
        wait_subscribers: usize,
        /// The transport: ws (the reference's wire) or zmq (a ZeroMQ PUB socket).
        #[arg(long, value_enum, default_value_t = TransportChoice::Ws)]
        transport: TransportChoice,
        #[command(flatten)]
        tls: TlsOpts,
        /// Require a client certificate signed by --tls-ca (WSS).
        #[arg(long)]
        require_client_cert: bool,
    },
    /// Subscribes to NAME (every publisher announcing it, reconnecting as they come and go) and
    /// prints each message as a line.
    Sub {
        /// The channel name to look up.
        name: String,
        /// Exit after this many messages (0: run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// The transport: ws (the reference's wire) or zmq (a ZeroMQ SUB socket).
        #[arg(long, value_enum, default_value_t = TransportChoice::Ws)]
        transport: TransportChoice,
        #[command(flatten)]
        tls: TlsOpts,
    },
    /// Serves NAME on one transport and forwards each request to the workers of TARGET on
    /// another (any pair of http, ws, zmq, utp; --to utp with --broker for workers behind
    /// NATs), announced until Ctrl-C or SIGTERM. Errors and
    /// timeouts reach the caller as error replies (ERR_TIMEOUT, ERR_GRAPE_LOOKUP_EMPTY, the
    /// worker's own message). With --bridge-sub/--bridge-pub it also republishes what the
    /// publishers of one name send on the --to transport to its own publisher on the --from one.
    Proxy {
        /// The name to serve and announce.
        name: String,
        /// The name of the workers to forward to (must differ from NAME).
        target: String,
        /// The transport callers use.
        #[arg(long, value_enum)]
        from: TransportChoice,
        /// The transport the workers speak.
        #[arg(long, value_enum)]
        to: TransportChoice,
        /// Port to listen on (0: any free port). The port is printed on start.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Time a forwarded request may take (milliseconds), then the caller gets ERR_TIMEOUT.
        #[arg(long, default_value_t = 30_000)]
        timeout: u64,
        /// Attempts per request, each retry to another worker.
        #[arg(long, default_value_t = 1)]
        retry: u32,
        /// Re-announce every this many milliseconds (jittered ±50 %).
        #[arg(long, default_value_t = 10_000)]
        interval: u64,
        /// PUB/SUB bridge: subscribe to the publishers of this name on the --to transport...
        #[arg(long, requires = "bridge_pub")]
        bridge_sub: Option<String>,
        /// ...and republish their messages under this name on the --from transport.
        #[arg(long, requires = "bridge_sub")]
        bridge_pub: Option<String>,
        /// On Ctrl-C or SIGTERM, let the requests being forwarded finish for this long (ms).
        #[arg(long, default_value_t = 10_000)]
        grace: u64,
        /// --to utp: find the workers through the broker announced as BROKER_NAME and punch
        /// them first (workers behind NATs).
        #[arg(long, value_name = "BROKER_NAME")]
        broker: Option<String>,
        /// With --broker: give up punching a worker after this many milliseconds.
        #[arg(long, default_value_t = 5_000, requires = "broker")]
        punch_timeout: u64,
    },
    /// Stores a value in the DHT and prints its hash. With --key it is a signed mutable item.
    Put {
        /// The value, as JSON (a bare word that is not JSON is stored as a string).
        json: String,
        /// Key file written by `keygen`: makes the item mutable and signed.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Sequence number of a mutable item.
        #[arg(long, default_value_t = 0)]
        seq: i64,
        /// Salt of a mutable item.
        #[arg(long)]
        salt: Option<String>,
        /// Compare-and-swap: only store if the current sequence number is this.
        #[arg(long)]
        cas: Option<i64>,
    },
    /// Reads an item from the DHT by hash; prints it, or `null` when not found.
    Get {
        /// The 40-hex-character hash.
        hash: String,
        /// Salt of a mutable item.
        #[arg(long)]
        salt: Option<String>,
    },
    /// Makes an ed25519 key pair for mutable items, writes it to FILE and prints the public key.
    Keygen {
        /// Where to write the key file (JSON with "secret" and "public" hex); created with mode 0600.
        file: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct RpcOpts {
    /// Timeout of each attempt, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout: u64,
    /// Gzip the request and the reply (grc-compress: gzip).
    #[arg(long)]
    compress: bool,
    /// The transport.
    #[arg(long, value_enum, default_value_t = TransportChoice::Http)]
    transport: TransportChoice,
    #[command(flatten)]
    tls: TlsOpts,
    /// uTP: find the workers through the broker announced as BROKER_NAME (their external
    /// endpoints behind NATs) and punch them before the request; the Grapes' lookup when the
    /// broker knows none.
    #[arg(long, value_name = "BROKER_NAME")]
    broker: Option<String>,
    /// uTP with --broker: give up punching a worker after this many milliseconds
    /// (ERR_PUNCH_TIMEOUT when none could be punched).
    #[arg(long, default_value_t = 5_000)]
    punch_timeout: u64,
}

/// Limits against hostile load (`serve`); the defaults are the library's.
#[derive(Debug, Args, Clone)]
struct LimitOpts {
    /// Most connections served at once; further ones are closed at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most connections one source IP address holds at once.
    #[arg(long, default_value_t = 2_000)]
    max_connections_per_ip: usize,
    /// HTTP: milliseconds a client has to send a request's head.
    #[arg(long, default_value_t = 10_000)]
    header_timeout: u64,
    /// HTTP: milliseconds a client has to send a request's whole body.
    #[arg(long, default_value_t = 60_000)]
    body_timeout: u64,
    /// HTTP: bytes per second a body must come at, on average, after its first 5 s (0: any).
    #[arg(long, default_value_t = 4096)]
    body_min_rate: u64,
    /// HTTP: milliseconds an idle keep-alive connection is kept.
    #[arg(long, default_value_t = 5_000)]
    idle_timeout: u64,
    /// HTTP: request-body bytes the whole server buffers at once (503 ERR_BUSY beyond).
    #[arg(long, default_value_t = 256 << 20)]
    max_body_in_flight: usize,
    /// WS: milliseconds of silence after which a socket is pinged (0: never).
    #[arg(long, default_value_t = 30_000)]
    ws_ping_interval: u64,
    /// WS: milliseconds a pinged socket has to answer.
    #[arg(long, default_value_t = 10_000)]
    ws_pong_timeout: u64,
    /// WS: milliseconds a socket that sends no request is kept (0: forever).
    #[arg(long, default_value_t = 300_000)]
    ws_idle_timeout: u64,
}

impl LimitOpts {
    fn limits(&self) -> transport::ServerLimits {
        let ms = Duration::from_millis;
        transport::ServerLimits {
            connections: transport::ConnLimits { max_connections: self.max_connections, max_per_ip: self.max_connections_per_ip },
            deadlines: transport::ReadDeadlines {
                header: ms(self.header_timeout),
                body: ms(self.body_timeout),
                body_min_rate: self.body_min_rate,
                idle: ms(self.idle_timeout),
                ..Default::default()
            },
            max_body_in_flight: self.max_body_in_flight,
            ws: transport::WsLiveness {
                ping_interval: ms(self.ws_ping_interval),
                pong_timeout: ms(self.ws_pong_timeout),
                idle: ms(self.ws_idle_timeout),
            },
        }
    }
}

#[derive(Debug, Args, Clone)]
struct TlsOpts {
    /// Certificate (PEM): the server's for `serve`, the client's for requests. Enables HTTPS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) the peer's certificate must chain to.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

/// The transports this CLI can use. A transport is a value: adding one is a new variant here and
/// two match arms below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportChoice {
    /// HTTP, or HTTPS with the --tls-* options (grenache-nodejs-http).
    Http,
    /// WebSocket, or WSS with the --tls-* options (grenache-nodejs-ws).
    Ws,
    /// uTP over UDP, with NAT hole punching (grenache-nodejs-utp); no TLS.
    Utp,
    /// ZeroMQ (ZMTP 3.1: ROUTER/DEALER for RPC, PUB/SUB); no TLS, no CURVE.
    Zmq,
}

fn read_file(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::invalid(format!("cannot read {}: {e}", p.display())))
}

fn client_tls(tls: &TlsOpts) -> Result<Option<ClientTls>> {
    if tls.tls_ca.is_none() && tls.tls_cert.is_none() {
        return Ok(None);
    }
    let mut b = ClientTls::builder();
    b = match &tls.tls_ca {
        Some(ca) => b.ca_pem(read_file(ca)?),
        None => b.danger_accept_any_server_cert(),
    };
    if let (Some(c), Some(k)) = (&tls.tls_cert, &tls.tls_key) {
        b = b.client_cert_pem(read_file(c)?, read_file(k)?);
    }
    Ok(Some(b.build()?))
}

fn server_tls(tls: &TlsOpts, require_client_cert: bool) -> Result<Option<ServerTls>> {
    let (Some(c), Some(k)) = (&tls.tls_cert, &tls.tls_key) else { return Ok(None) };
    let mut b = ServerTls::builder(read_file(c)?, read_file(k)?);
    if let Some(ca) = &tls.tls_ca {
        b = b.client_ca_pem(read_file(ca)?);
    }
    b = b.client_auth(if require_client_cert { ClientAuth::Required } else { ClientAuth::AnyCertificate });
    Ok(Some(b.build()?))
}

impl TransportChoice {
    fn kind(self) -> TransportKind {
        match self {
            TransportChoice::Http => TransportKind::Http,
            TransportChoice::Ws => TransportKind::Ws,
            TransportChoice::Utp => TransportKind::Utp,
            TransportChoice::Zmq => TransportKind::Zmq,
        }
    }

    fn client(self, tls: &TlsOpts) -> Result<Arc<dyn ClientTransport>> {
        Ok(transport::client(self.kind(), client_tls(tls)?))
    }
}

impl RpcOpts {
    /// The RPC client these options describe: over uTP with --broker, one node carries the
    /// broker lookup, the punches and the requests.
    async fn client(&self, link: Link) -> Result<PeerRpcClient> {
        let Some(broker) = &self.broker else {
            return Ok(PeerRpcClient::new(link, self.transport.client(&self.tls)?, PeerRpcClientConfig::default()));
        };
        if self.transport != TransportChoice::Utp {
            return Err(Error::invalid("--broker needs --transport utp"));
        }
        let node = UtpNode::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
        let transport = Arc::new(UtpClient::with_node(node.clone(), UtpClientConfig::default()));
        let config =
            BrokerClientConfig { name: broker.clone(), punch_timeout: Duration::from_millis(self.punch_timeout), ..Default::default() };
        let resolver = Arc::new(BrokerClient::new(link.clone(), node, config));
        Ok(PeerRpcClient::new(link, transport, PeerRpcClientConfig::default()).with_resolver(resolver))
    }
}

impl TransportChoice {
    async fn serve(
        self,
        addr: SocketAddr,
        handler: Arc<dyn Handler>,
        tls: &TlsOpts,
        require_client_cert: bool,
        reply_timeout: Option<Duration>,
        limits: transport::ServerLimits,
    ) -> Result<Arc<dyn ServerTransport>> {
        let settings =
            transport::ServerSettings { tls: server_tls(tls, require_client_cert)?, reply_timeout, limits, ..Default::default() };
        transport::bind_server_with(self.kind(), addr, handler, settings).await
    }
}

/// JSON text, or a bare word taken as a string.
fn parse_payload(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Timeout => 3,
        ErrorKind::Connect | ErrorKind::Closed | ErrorKind::Io | ErrorKind::TlsHandshake => 4,
        ErrorKind::LookupEmpty => 5,
        ErrorKind::Remote => 6,
        ErrorKind::Grape
        | ErrorKind::NoNodes
        | ErrorKind::AllQueriesFailed
        | ErrorKind::SeqTooLow
        | ErrorKind::CasMismatch
        | ErrorKind::Dht
        | ErrorKind::PayloadTooLarge => 7,
        ErrorKind::InvalidArgument | ErrorKind::Decode | ErrorKind::Certificate | ErrorKind::TlsConfig => 8,
        ErrorKind::PunchTimeout => 9,
        _ => 1,
    }
}

fn print(v: &Value) {
    println!("{v}");
}

fn load_key(p: &PathBuf) -> Result<Keypair> {
    let text = read_file(p)?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| Error::invalid(format!("key file {}: {e}", p.display())))?;
    let secret = v["secret"].as_str().ok_or_else(|| Error::invalid(format!("key file {} has no \"secret\"", p.display())))?;
    Keypair::from_secret_hex(secret)
}

fn write_key(p: &PathBuf, key: &Keypair, force: bool) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(p).map_err(|e| Error::invalid(format!("cannot create {}: {e}", p.display())))?;
    let body = json!({"secret": key.secret_hex(), "public": key.public_hex()});
    writeln!(f, "{body}")?;
    Ok(())
}

fn handler(fixed: Option<Value>, with_remote: bool) -> Arc<dyn Handler> {
    Arc::new(move |req: Request, reply: Reply| match &fixed {
        Some(v) => reply.ok(v.clone()),
        None if with_remote => {
            let remote = req.info.remote_addr.map(|a| a.to_string());
            reply.ok(json!({"payload": req.payload.into_value(), "remote": remote}))
        }
        None => reply.ok_raw(req.payload.into_raw()),
    })
}

async fn until_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let link = Link::new(LinkConfig {
        request_timeout: Duration::from_millis(cli.grape_timeout.max(1)),
        ..LinkConfig::with_grape(cli.grape.clone())
    })?;
    // The service names the command reads or announces: pinned and signed as asked.
    let names: Vec<&str> = match &cli.cmd {
        Cmd::Lookup { name } | Cmd::Announce { name, .. } | Cmd::Request { name, .. } | Cmd::Map { name, .. } => vec![name],
        Cmd::Sub { name, .. } | Cmd::Pub { name, .. } => vec![name],
        Cmd::Serve { names, .. } => names.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    if !cli.service_keys.is_empty() {
        let keys: Vec<&str> = cli.service_keys.iter().map(String::as_str).collect();
        for n in &names {
            link.pin_service(n, &keys)?;
        }
    }
    if !cli.sign_keys.is_empty() {
        let keys = cli.sign_keys.iter().map(load_key).collect::<Result<Vec<_>>>()?;
        for n in &names {
            link.sign_announcements(n, Some(grenache::link::signed::AnnounceSigner::new(keys.clone())))?;
        }
    }
    match cli.cmd {
        Cmd::Lookup { name } => print(&json!(link.lookup(&name).await?)),
        Cmd::Unannounce { name, port } => {
            let acks = link.unannounce(&name, port).await?;
            print(&json!({"unannounced": name, "port": port, "nodes": acks}));
        }
        Cmd::Announce { name, port } => {
            link.announce(&name, port).await?;
            print(&json!({"announced": name, "port": port}));
        }
        Cmd::Request { name, json: payload, rpc, retry, retry_remote, dest } => {
            let client = rpc.client(link).await?;
            let opts = RequestOptions {
                timeout: Some(Duration::from_millis(rpc.timeout)),
                retry,
                retry_remote,
                compress: rpc.compress,
                dest,
                ..Default::default()
            };
            print(&client.request(&name, &parse_payload(&payload), &opts).await?);
        }
        Cmd::Map { name, json: payload, rpc, limit } => {
            let client = rpc.client(link).await?;
            let opts =
                RequestOptions { timeout: Some(Duration::from_millis(rpc.timeout)), compress: rpc.compress, limit, ..Default::default() };
            print(&json!(client.map(&name, &parse_payload(&payload), &opts).await?));
        }
        Cmd::Serve {
            names,
            port,
            bind,
            reply,
            transport,
            interval,
            reply_timeout,
            tls,
            limits,
            require_client_cert,
            grace,
            broker,
            register_interval,
            with_remote,
        } => {
            // A server: give memory freed after bursts back to the system.
            trim::start();
            let fixed = reply.as_deref().map(parse_payload);
            let addr: SocketAddr =
                format!("{bind}:{port}").parse().map_err(|e| Error::invalid(format!("bad --bind/--port {bind}:{port}: {e}")))?;
            let handler = handler(fixed, with_remote);
            let reply_timeout = reply_timeout.map(Duration::from_millis);
            let mut registrations = Vec::new();
            let server: Arc<dyn ServerTransport> = match (&broker, transport) {
                (None, _) => transport.serve(addr, handler, &tls, require_client_cert, reply_timeout, limits.limits()).await?,
                (Some(broker), TransportChoice::Utp) => {
                    let utp = UtpServer::bind(addr, handler, UtpServerConfig { reply_timeout, ..Default::default() }).await?;
                    let config = BrokerClientConfig { name: broker.clone(), ..Default::default() };
                    let bc = BrokerClient::new(link.clone(), utp.node().clone(), config);
                    for n in &names {
                        registrations.push(bc.keep_registered(n, Duration::from_millis(register_interval.max(100))).await?);
                    }
                    Arc::new(utp)
                }
                (Some(_), _) => return Err(Error::invalid("--broker needs --transport utp")),
            };
            let peer = PeerRpcServer::new(link, server);
            let mut handles = Vec::new();
            for n in &names {
                let h = peer.start_announcing(n, Duration::from_millis(interval.max(100)));
                h.first_result(Duration::from_secs(30)).await?;
                handles.push(h);
            }
            print(&json!({"event": "started", "port": peer.port(), "names": names}));
            // Keep serving until Ctrl-C or SIGTERM; report announce failures as they happen.
            let mut warned = false;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => {
                        r?;
                        break;
                    }
                    _ = term.recv() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let err = handles.iter().find_map(|h| h.last_error());
                        match (&err, warned) {
                            (Some(e), false) => { eprintln!("{}: announce failing: {}", e.kind().name(), e); warned = true; }
                            (None, true) => { eprintln!("announce recovered"); warned = false; }
                            _ => {}
                        }
                    }
                }
            }
            drop(registrations);
            let drained = peer.shutdown(Duration::from_millis(grace)).await;
            peer.stop();
            print(&json!({"event": "stopped", "drained": drained}));
        }
        Cmd::Broker { name, port, bind, entry_ttl, max_entries } => {
            let addr: SocketAddr =
                format!("{bind}:{port}").parse().map_err(|e| Error::invalid(format!("bad --bind/--port {bind}:{port}: {e}")))?;
            let config =
                BrokerConfig { name: name.clone(), entry_ttl: Duration::from_millis(entry_ttl.max(1)), max_entries, ..Default::default() };
            let broker = Broker::start(link, addr, config).await?;
            print(&json!({"event": "started", "port": broker.local_addr().port(), "name": name}));
            until_signal().await?;
            broker.stop();
            print(&json!({"event": "stopped"}));
        }
        Cmd::Pub { name, port, bind, interval, wait_subscribers, transport, tls, require_client_cert } => {
            use tokio::io::AsyncBufReadExt;
            let addr: SocketAddr =
                format!("{bind}:{port}").parse().map_err(|e| Error::invalid(format!("bad --bind/--port {bind}:{port}: {e}")))?;
            let mut cfg = PubConfig::default().transport(transport.kind());
            if let Some(t) = server_tls(&tls, require_client_cert)? {
                cfg = cfg.tls(t);
            }
            let publisher = PeerPub::bind(addr, cfg).await?;
            let h = publisher.start_announcing(&link, &name, Duration::from_millis(interval.max(100)));
            h.first_result(Duration::from_secs(30)).await?;
            print(&json!({"event": "started", "port": publisher.port(), "name": name}));
            if wait_subscribers > 0 {
                publisher.wait_subscribers(wait_subscribers, Duration::from_secs(60)).await?;
            }
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            loop {
                tokio::select! {
                    l = lines.next_line() => match l? {
                        Some(line) => { publisher.publish(line); }
                        None => break,
                    },
                    r = tokio::signal::ctrl_c() => { r?; break; }
                }
            }
            // Let the per-subscriber queues drain before closing the sockets.
            tokio::time::sleep(Duration::from_millis(200)).await;
            h.stop();
            publisher.close();
            print(&json!({"event": "stopped", "published": publisher.stats().published}));
        }
        Cmd::Sub { name, count, transport, tls } => {
            let mut cfg = SubConfig::default().transport(transport.kind());
            if let Some(t) = client_tls(&tls)? {
                cfg = cfg.tls(t);
            }
            let sub = PeerSub::new(link, cfg);
            let mut s = sub.sub(&name);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    m = s.recv() => match m {
                        Some(m) => {
                            match m.text() {
                                Some(t) => println!("{t}"),
                                None => println!("{}", hex::encode(&m.data)),
                            }
                            n += 1;
                            if count > 0 && n >= count {
                                break;
                            }
                        }
                        None => break,
                    },
                    r = tokio::signal::ctrl_c() => { r?; break; }
                }
            }
            s.close();
        }
        Cmd::Proxy {
            name,
            target,
            from,
            to,
            port,
            bind,
            timeout,
            retry,
            interval,
            bridge_sub,
            bridge_pub,
            grace,
            broker,
            punch_timeout,
        } => {
            let addr: SocketAddr =
                format!("{bind}:{port}").parse().map_err(|e| Error::invalid(format!("bad --bind/--port {bind}:{port}: {e}")))?;
            let mut cfg = grenache::proxy::ProxyConfig::new(name.clone(), target.clone(), from.kind(), to.kind());
            cfg.addr = addr;
            cfg.timeout = Duration::from_millis(timeout.max(1));
            cfg.retry = retry;
            cfg.announce_interval = Duration::from_millis(interval.max(100));
            cfg.bridge = bridge_sub.zip(bridge_pub);
            cfg.broker = broker;
            cfg.punch_timeout = Duration::from_millis(punch_timeout.max(1));
            let proxy = grenache::proxy::Proxy::start(link, cfg).await?;
            print(&json!({"event": "started", "port": proxy.port(), "pub_port": proxy.pub_port(), "name": name, "target": target}));
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r?,
                _ = term.recv() => {}
            }
            let drained = proxy.shutdown(Duration::from_millis(grace)).await;
            let st = proxy.stats();
            print(&json!({"event": "stopped", "drained": drained, "forwarded": st.forwarded, "failed": st.failed, "bridged": st.bridged}));
        }
        Cmd::Put { json: value, key, seq, salt, cas } => {
            let v = parse_payload(&value);
            let hash = match key {
                Some(kf) => {
                    let k = load_key(&kf)?;
                    link.put_mutable(&k, &MutableItem { v, seq, salt, cas }).await?
                }
                None => link.put_value(&v).await?,
            };
            print(&json!(hash));
        }
        Cmd::Get { hash, salt } => {
            let item = match salt {
                Some(s) => link.get_salted(&hash, &s).await?,
                None => link.get(&hash).await?,
            };
            print(&item.unwrap_or(Value::Null));
        }
        Cmd::Keygen { file, force } => {
            let k = Keypair::generate();
            write_key(&file, &k, force)?;
            print(&json!({"public": k.public_hex(), "file": file}));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.message();
            if msg.is_empty() {
                eprintln!("{}", e.kind().name());
            } else {
                eprintln!("{}: {}", e.kind().name(), msg);
            }
            ExitCode::from(exit_code(&e))
        }
    }
}
