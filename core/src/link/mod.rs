//! Link: the client of a Grape's HTTP API (lookup cache and coalescing, announce,
//! keep-announcing, put/get, signed mutable put).
//!
//! Wire format (grenache-nodejs-link 1.0.2): `POST <grape>/<type>` with the JSON body
//! `{"rid":"<uuid v4>","data":<payload>}`, over pooled keep-alive connections.
//!
//! Deliberate differences from the reference (see `docs/compat.md`, "Link"):
//! * Grape error strings (`"ERR_GRAPE_..."` with HTTP 200) are errors of kind [`ErrorKind::Grape`],
//!   not successful data; non-2xx replies are errors carrying the status.
//! * Empty lookup results are **not** cached, so a service announced right after a failed lookup
//!   is found at once.
//! * Errors of the keep-announcing loop are recorded on its [`AnnounceHandle`] instead of being
//!   swallowed.
//! * A trailing `/` on the Grape URL is ignored.

mod bencode;
pub mod signed;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};

pub use bencode::bencode;

/// The reference's default Grape HTTP API address used by the CLI and examples.
pub const DEFAULT_GRAPE: &str = "http://127.0.0.1:30001";

/// The largest Grape reply body the Link accepts (lookups return at most 100 addresses).
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Most keep-announcing loops one Link runs at once.
const MAX_ANNOUNCERS: usize = 10_000;

/// Most distinct names with a lookup in flight at once (bounds the coalescing table).
const MAX_INFLIGHT_LOOKUPS: usize = 10_000;

/// Most names pinned to service keys, and most names signed, per Link.
const MAX_PINS: usize = 10_000;
/// Most keys per pinned or signed name.
const MAX_KEYS_PER_NAME: usize = 8;
/// Verified proofs remembered (name, address and key → valid until, unix seconds).
const PROOF_CACHE: usize = 10_000;

type ProofCache = lru::LruCache<(String, std::net::SocketAddr, [u8; 32]), u64>;

/// Link settings. The defaults are the reference's.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Base URL of the Grape HTTP API, e.g. `http://127.0.0.1:30001`.
    pub grape: String,
    /// Timeout of each call to the Grape (the reference's `requestTimeout`, 2500 ms).
    pub request_timeout: Duration,
    /// Most entries in the lookup cache (the reference's `lruMaxSizeLookup`, 2500).
    pub lookup_cache_size: usize,
    /// How long a lookup result is served from the cache (the reference's `lruMaxAgeLookup`, 10 s).
    /// Zero disables the cache.
    pub lookup_cache_ttl: Duration,
    /// Total attempts of `lookup` and `announce` on transport errors (the reference's 3).
    pub retries: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            grape: DEFAULT_GRAPE.to_string(),
            request_timeout: Duration::from_millis(2500),
            lookup_cache_size: 2500,
            lookup_cache_ttl: Duration::from_secs(10),
            retries: 3,
        }
    }
}

impl LinkConfig {
    /// The defaults with another Grape URL.
    pub fn with_grape(grape: impl Into<String>) -> Self {
        LinkConfig { grape: grape.into(), ..Default::default() }
    }
}

type LookupResult = std::result::Result<Arc<[String]>, (ErrorKind, String)>;
type LookupCache = lru::LruCache<String, (Instant, Arc<[String]>)>;

struct Inner {
    config: LinkConfig,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    cache: Mutex<LookupCache>,
    inflight: Mutex<HashMap<String, Vec<oneshot::Sender<LookupResult>>>>,
    announcers: Mutex<HashMap<String, AnnounceHandle>>,
    /// Names whose lookups keep only addresses with a valid proof of one of these keys.
    pins: Mutex<HashMap<String, Arc<[[u8; 32]]>>>,
    /// Names whose announces publish proofs.
    signers: Mutex<HashMap<String, signed::AnnounceSigner>>,
    /// When the proofs of (name, port) were last published (unix seconds).
    published: Mutex<lru::LruCache<(String, u16), u64>>,
    /// Proofs verified lately.
    proofs: Mutex<ProofCache>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("grape", &self.base).finish_non_exhaustive()
    }
}

/// A client of one Grape's HTTP API. Cheap to clone: clones share the connection pool, the lookup
/// cache and the keep-announcing loops.
#[derive(Debug, Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// A Link to the Grape at `config.grape`. Fails on a URL that is not `http://host:port`.
    pub fn new(config: LinkConfig) -> Result<Link> {
        let base = config.grape.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(Error::invalid(format!("grape URL must look like http://host:port, got {:?}", config.grape)));
        }
        base.parse::<http::Uri>().map_err(|e| Error::invalid(format!("bad grape URL {base:?}: {e}")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.request_timeout));
        let client = Client::builder(TokioExecutor::new())
            // Node's server closes idle keep-alive sockets after 5 s: give them up before that.
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_max_idle_per_host(32)
            .build(connector);
        let cap = NonZeroUsize::new(config.lookup_cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(Link {
            inner: Arc::new(Inner {
                base,
                client,
                cache: Mutex::new(lru::LruCache::new(cap)),
                inflight: Mutex::new(HashMap::new()),
                announcers: Mutex::new(HashMap::new()),
                pins: Mutex::new(HashMap::new()),
                signers: Mutex::new(HashMap::new()),
                published: Mutex::new(lru::LruCache::new(NonZeroUsize::new(MAX_PINS).unwrap_or(NonZeroUsize::MIN))),
                proofs: Mutex::new(lru::LruCache::new(NonZeroUsize::new(PROOF_CACHE).unwrap_or(NonZeroUsize::MIN))),
                config,
            }),
        })
    }

    /// A Link with default settings to `grape`.
    pub fn with_grape(grape: impl Into<String>) -> Result<Link> {
        Link::new(LinkConfig::with_grape(grape))
    }

    /// The settings.
    pub fn config(&self) -> &LinkConfig {
        &self.inner.config
    }

    /// Stops every keep-announcing loop and clears the lookup cache (the reference's `stop()`).
    /// Calls in flight are not aborted. The Link stays usable.
    pub fn stop(&self) {
        let all: Vec<AnnounceHandle> = lock(&self.inner.announcers).drain().map(|(_, h)| h).collect();
        for h in all {
            h.token.cancel();
        }
        lock(&self.inner.cache).clear();
    }

    /// One call to the Grape API: `POST <grape>/<kind>` with `{"rid","data"}`, one attempt.
    ///
    /// Returns `Ok(None)` for an empty reply body (a `get` miss), the parsed JSON otherwise.
    /// A JSON string starting with `ERR_` or a number-prefixed DHT error (`"302 ..."`) becomes an
    /// [`ErrorKind::Grape`] error (or the matching DHT kind); a non-2xx status is an error too.
    pub async fn call(&self, kind: &str, data: &Value, timeout: Option<Duration>) -> Result<Option<Value>> {
        let timeout = timeout.unwrap_or(self.inner.config.request_timeout);
        let url = format!("{}/{}", self.inner.base, kind);
        let body = serde_json::to_vec(&json!({"rid": crate::rid::new_rid(), "data": data}))?;
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::invalid(format!("bad grape request {url}: {e}")))?;
        let fut = async {
            let resp = self.inner.client.request(req).await.map_err(|e| map_client_error(&url, e))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| Error::new(ErrorKind::Closed, format!("reading the reply of {url}: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::timeout(format!("the grape did not answer {url} within {timeout:?}")))??;
        let parsed: Option<Value> = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            None
        } else {
            Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())))
        };
        if !status.is_success() {
            let text = match &parsed {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            return Err(grape_error(Some(status.as_u16()), &text));
        }
        if let Some(Value::String(s)) = &parsed
            && is_error_string(s)
        {
            return Err(grape_error(None, s));
        }
        Ok(parsed)
    }

    async fn call_retry(&self, kind: &str, data: &Value, attempts: u32) -> Result<Option<Value>> {
        let attempts = attempts.max(1);
        let mut last = None;
        for _ in 0..attempts {
            match self.call(kind, data, None).await {
                Ok(v) => return Ok(v),
                Err(e) if is_transport_error(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::Internal, "no attempt made")))
    }

    /// The `"ip:port"` addresses announcing `name`.
    ///
    /// Served from the cache when a non-empty result is younger than `lookup_cache_ttl`.
    /// Concurrent lookups of one name make one HTTP call. No address → [`ErrorKind::LookupEmpty`].
    pub async fn lookup(&self, name: &str) -> Result<Vec<String>> {
        self.lookup_shared(name).await.map(|a| a.to_vec())
    }

    /// Like [`Link::lookup`], sharing the cached list instead of copying it.
    pub async fn lookup_shared(&self, name: &str) -> Result<Arc<[String]>> {
        if let Some(hit) = self.cached_lookup(name) {
            return Ok(hit);
        }
        let (tx, rx) = oneshot::channel();
        let leader = {
            let mut inflight = lock(&self.inner.inflight);
            if let Some(waiters) = inflight.get_mut(name) {
                waiters.push(tx);
                false
            } else {
                if inflight.len() >= MAX_INFLIGHT_LOOKUPS {
                    return Err(Error::new(ErrorKind::InvalidState, "too many lookups in flight"));
                }
                inflight.insert(name.to_string(), vec![tx]);
                true
            }
        };
        if leader {
            // The HTTP call runs in its own task so a cancelled caller does not strand the others.
            let link = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                // Removes the in-flight entry even if this task is aborted (waiters then see
                // `Cancelled` instead of waiting for their timeout).
                let mut guard = InflightGuard { link: link.clone(), name: name.clone(), armed: true };
                let res: LookupResult = link.lookup_uncached(&name).await.map_err(|e| (e.kind(), e.message().to_string()));
                if let Ok(list) = &res
                    && !link.inner.config.lookup_cache_ttl.is_zero()
                {
                    lock(&link.inner.cache).put(name.clone(), (Instant::now(), list.clone()));
                }
                let waiters = lock(&link.inner.inflight).remove(&name).unwrap_or_default();
                // Removed: from now on a new lookup of this name may start; leave its entry alone.
                guard.armed = false;
                for w in waiters {
                    let _ = w.send(res.clone());
                }
            });
        }
        let cfg = &self.inner.config;
        let budget = cfg.request_timeout.saturating_mul(cfg.retries.max(1)).saturating_add(Duration::from_secs(1));
        match tokio::time::timeout(budget, rx).await {
            Ok(Ok(Ok(list))) => Ok(list),
            Ok(Ok(Err((kind, msg)))) => Err(Error::new(kind, msg)),
            Ok(Err(_)) => Err(Error::new(ErrorKind::Cancelled, "the lookup task ended without an answer")),
            Err(_) => Err(Error::timeout(format!("lookup of {name:?} did not finish within {budget:?}"))),
        }
    }

    async fn lookup_uncached(&self, name: &str) -> Result<Arc<[String]>> {
        let v = self.call_retry("lookup", &Value::String(name.to_string()), self.inner.config.retries).await?;
        let list: Vec<String> = match v {
            Some(Value::Array(a)) => a.into_iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        if list.is_empty() {
            return Err(Error::new(ErrorKind::LookupEmpty, format!("no peer announces {name:?}")));
        }
        let keys = lock(&self.inner.pins).get(name).cloned();
        let list = match keys {
            Some(keys) => {
                let proven = self.proven(name, list, &keys).await;
                if proven.is_empty() {
                    return Err(Error::new(
                        ErrorKind::LookupEmpty,
                        format!("no address announcing {name:?} has a valid proof of the service key"),
                    ));
                }
                proven
            }
            None => list,
        };
        Ok(list.into())
    }

    /// The addresses of `list` with a valid proof under one of `keys` (checked concurrently,
    /// verified proofs remembered until they expire).
    async fn proven(&self, name: &str, list: Vec<String>, keys: &[[u8; 32]]) -> Vec<String> {
        let now = signed::unix_now();
        let checks = list.into_iter().map(|a| async move {
            let addr: std::net::SocketAddr = a.parse().ok()?;
            {
                let mut proofs = lock(&self.inner.proofs);
                if keys.iter().any(|k| proofs.get(&(name.to_string(), addr, *k)).is_some_and(|until| *until > now)) {
                    return Some(a);
                }
            }
            for k in keys {
                let q = json!({"hash": signed::proof_target(k, name, addr.port()), "salt": signed::proof_salt(name, addr.port())});
                let item = match self.get_with(&q).await {
                    Ok(Some(item)) => item,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(name, addr = %addr, error = %e, "reading a proof failed");
                        continue;
                    }
                };
                match signed::verify_proof(&item, k, name, addr, now) {
                    Ok(p) => {
                        lock(&self.inner.proofs).put((name.to_string(), addr, *k), p.expires);
                        return Some(a);
                    }
                    Err(e) => tracing::info!(name, addr = %addr, reason = ?e, "refused a proof"),
                }
            }
            tracing::info!(name, addr = %addr, "an address without a valid proof of the service key is not used");
            None
        });
        futures_util::future::join_all(checks).await.into_iter().flatten().collect()
    }

    /// Pins `name` to the ed25519 public keys `keys_hex` (64 hex characters each, at most 8; two
    /// during a key rotation): from now on its lookups, and so every request of a
    /// [`crate::rpc::PeerRpcClient`] on this Link, use only addresses with a valid signed proof
    /// under one of them (see [`signed`] and `docs/signed-announce.md`). An address without one
    /// (a hijacker announcing the name) is never returned; when none has one the lookup fails
    /// with [`ErrorKind::LookupEmpty`]. An empty list unpins the name.
    pub fn pin_service(&self, name: &str, keys_hex: &[&str]) -> Result<()> {
        let keys: Vec<[u8; 32]> = keys_hex.iter().map(|k| signed::parse_public_key(k)).collect::<Result<_>>()?;
        if keys.len() > MAX_KEYS_PER_NAME {
            return Err(Error::invalid(format!("at most {MAX_KEYS_PER_NAME} keys per service")));
        }
        let mut pins = lock(&self.inner.pins);
        if keys.is_empty() {
            pins.remove(name);
        } else {
            if !pins.contains_key(name) && pins.len() >= MAX_PINS {
                return Err(Error::invalid(format!("at most {MAX_PINS} pinned services per link")));
            }
            pins.insert(name.to_string(), keys.into());
        }
        drop(pins);
        self.invalidate(name);
        Ok(())
    }

    /// The keys `name` is pinned to (hex), empty when it is not pinned.
    pub fn pinned_keys(&self, name: &str) -> Vec<String> {
        lock(&self.inner.pins).get(name).map(|k| k.iter().map(hex::encode).collect()).unwrap_or_default()
    }

    /// Makes every announce of `name` through this Link (once or kept up, e.g. by a
    /// [`crate::rpc::PeerRpcServer`]) also publish a signed proof of the address under each of
    /// `signer.keys`, so that clients pinned to one of them ([`Link::pin_service`]) use it. The
    /// proofs are BEP44 mutable items: the Grapes must store them (ours do; Node Grapes 1.0.0
    /// only when given a verifier). `None` stops signing.
    pub fn sign_announcements(&self, name: &str, signer: Option<signed::AnnounceSigner>) -> Result<()> {
        let mut signers = lock(&self.inner.signers);
        match signer {
            None => {
                signers.remove(name);
            }
            Some(s) => {
                if s.keys.is_empty() || s.keys.len() > MAX_KEYS_PER_NAME {
                    return Err(Error::invalid(format!("1 to {MAX_KEYS_PER_NAME} keys per service")));
                }
                if !signers.contains_key(name) && signers.len() >= MAX_PINS {
                    return Err(Error::invalid(format!("at most {MAX_PINS} signed services per link")));
                }
                signers.insert(name.to_string(), s);
            }
        }
        drop(signers);
        lock(&self.inner.published).clear();
        Ok(())
    }

    /// Publishes the proofs of `name` on `port` when they are due (never published, or half of
    /// their TTL gone).
    async fn publish_proofs(&self, name: &str, port: u16) -> Result<()> {
        let Some(signer) = lock(&self.inner.signers).get(name).cloned() else { return Ok(()) };
        let now = signed::unix_now();
        let ttl = signer.ttl.as_secs().max(2);
        let key = (name.to_string(), port);
        if lock(&self.inner.published).get(&key).is_some_and(|at| now < at + ttl / 2) {
            return Ok(());
        }
        let ips = if signer.ips.is_empty() { signed::default_ips(self.grape_ip()) } else { signer.ips.clone() };
        let proof = signed::AnnounceProof { name: name.to_string(), port, ips, expires: now + ttl };
        for k in &signer.keys {
            self.put(&proof.sign(k)?).await?;
        }
        lock(&self.inner.published).put(key, now);
        Ok(())
    }

    /// The Grape's IP address when its URL names one (`localhost` is 127.0.0.1; `[v6]` too).
    fn grape_ip(&self) -> Option<std::net::IpAddr> {
        let host = self.inner.base.strip_prefix("http://")?;
        let host = host.split('/').next()?;
        if let Some(v6) = host.strip_prefix('[') {
            return v6.split(']').next()?.parse().ok();
        }
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if host == "localhost" {
            return Some(std::net::Ipv4Addr::LOCALHOST.into());
        }
        host.parse().ok()
    }

    /// The cached lookup result of `name`, if it is fresh.
    pub fn cached_lookup(&self, name: &str) -> Option<Arc<[String]>> {
        let ttl = self.inner.config.lookup_cache_ttl;
        let mut cache = lock(&self.inner.cache);
        match cache.get(name) {
            Some((at, list)) if at.elapsed() < ttl => Some(list.clone()),
            Some(_) => {
                cache.pop(name);
                None
            }
            None => None,
        }
    }

    /// Forgets the cached lookup result of `name` (e.g. after its peers stopped answering).
    pub fn invalidate(&self, name: &str) {
        lock(&self.inner.cache).pop(name);
    }

    /// Announces once that `name` is served on `port` of this host (as the Grape sees it).
    /// Retried on transport errors like the reference (3 attempts).
    ///
    /// With [`Link::sign_announcements`] for `name`, the signed proofs are published first (when
    /// due); a failure to publish them fails the announce.
    pub async fn announce(&self, name: &str, port: u16) -> Result<()> {
        self.publish_proofs(name, port).await?;
        self.call_retry("announce", &json!([name, port]), self.inner.config.retries).await?;
        Ok(())
    }

    /// Removes the announce of `name` on `port` from the Grapes at once (`POST /unannounce`, see
    /// [`crate::grape::Grape::unannounce`]): lookups through our Grapes stop returning it. Stop
    /// announcing it first ([`Link::stop_announcing`]). Returns how many DHT nodes removed it.
    /// One attempt. A Node reference Grape has no such call: it answers `ERR_REQ_NOTFOUND`
    /// (an [`ErrorKind::Grape`] error) and the address stays until its announce expires.
    pub async fn unannounce(&self, name: &str, port: u16) -> Result<u64> {
        match self.call("unannounce", &json!([name, port]), None).await? {
            Some(Value::Number(n)) => Ok(n.as_u64().unwrap_or(0)),
            other => Err(Error::new(ErrorKind::Protocol, format!("unannounce: the grape answered {other:?}, not a count"))),
        }
    }

    /// Announces `name` on `port` now and again after a random delay uniform in
    /// `[0.5, 1.5] × interval` after each attempt, until stopped.
    ///
    /// Calling it again for a running `(name, port)` returns the running loop's handle. Needs a
    /// tokio runtime. The Grape keeps peers for 2 minutes: keep `interval` well under that.
    pub fn start_announcing(&self, name: &str, port: u16, interval: Duration) -> AnnounceHandle {
        let id = format!("{port}:{name}");
        let mut announcers = lock(&self.inner.announcers);
        if let Some(h) = announcers.get(&id)
            && !h.token.is_cancelled()
        {
            return h.clone();
        }
        announcers.retain(|_, h| !h.token.is_cancelled());
        let (tx, rx) = watch::channel(AnnounceStatus::default());
        let handle = AnnounceHandle { name: name.into(), port, token: CancellationToken::new(), status: rx };
        if announcers.len() >= MAX_ANNOUNCERS {
            handle.token.cancel();
            let _ = tx.send(AnnounceStatus {
                last_error: Some((ErrorKind::InvalidState, "too many keep-announcing loops".into())),
                ..Default::default()
            });
            return handle;
        }
        announcers.insert(id, handle.clone());
        drop(announcers);
        let link = self.clone();
        let token = handle.token.clone();
        let name = name.to_string();
        let interval = interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            loop {
                let res = tokio::select! {
                    r = link.announce(&name, port) => r,
                    _ = token.cancelled() => return,
                };
                tx.send_modify(|s| {
                    s.attempts += 1;
                    match res {
                        Ok(()) => {
                            s.successes += 1;
                            s.last_error = None;
                        }
                        Err(e) => {
                            tracing::warn!(name = %name, port, error = %e, "announce failed");
                            s.failures += 1;
                            s.last_error = Some((e.kind(), e.message().to_string()));
                        }
                    }
                });
                let delay = jitter(interval);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = token.cancelled() => return,
                }
            }
        });
        handle
    }

    /// Stops the keep-announcing loop of `(name, port)`. False when none runs.
    pub fn stop_announcing(&self, name: &str, port: u16) -> bool {
        match lock(&self.inner.announcers).remove(&format!("{port}:{name}")) {
            Some(h) => {
                h.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Stores `data` in the DHT as the reference's payload: `{"v": ...}` for an immutable item or
    /// `{"v","k","sig","seq","salt"?,"cas"?}` for a signed mutable one. Returns the hex target.
    pub async fn put(&self, data: &Value) -> Result<String> {
        if !data.is_object() || data.get("v").is_none() {
            return Err(Error::invalid("put needs an object with a \"v\" field"));
        }
        match self.call("put", data, None).await? {
            Some(Value::String(s)) => Ok(s),
            other => Err(Error::new(ErrorKind::Protocol, format!("put: the grape answered {other:?}, not a hash"))),
        }
    }

    /// Stores the immutable value `v`; returns its hex target (SHA-1 of its bencoding).
    pub async fn put_value(&self, v: &Value) -> Result<String> {
        self.put(&json!({ "v": v })).await
    }

    /// Signs `v` with `key` (BEP44: the bytes `4:salt<n>:<salt>3:seqi<seq>e1:v<bencoded v>`) and
    /// stores it as a mutable item. Returns the hex target (SHA-1 of the public key and salt).
    pub async fn put_mutable(&self, key: &Keypair, item: &MutableItem) -> Result<String> {
        self.put(&key.sign_item(item)?).await
    }

    /// Reads the item with hex target `hash`. `Ok(None)` when the DHT has no such item.
    pub async fn get(&self, hash: &str) -> Result<Option<Value>> {
        self.get_with(&Value::String(hash.to_string())).await
    }

    /// Reads a salted mutable item.
    pub async fn get_salted(&self, hash: &str, salt: &str) -> Result<Option<Value>> {
        self.get_with(&json!({"hash": hash, "salt": salt})).await
    }

    async fn get_with(&self, query: &Value) -> Result<Option<Value>> {
        match self.call("get", query, None).await? {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(v)),
            Some(other) => Err(Error::new(ErrorKind::Protocol, format!("get: the grape answered {other}, not an object"))),
        }
    }
}

struct InflightGuard {
    link: Link,
    name: String,
    armed: bool,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.link.inner.inflight).remove(&self.name);
        }
    }
}

/// A uniform random delay in `[0.5, 1.5] × interval`.
pub fn jitter(interval: Duration) -> Duration {
    let f: f64 = rand::thread_rng().gen_range(0.5..=1.5);
    Duration::try_from_secs_f64(interval.as_secs_f64() * f).unwrap_or(Duration::MAX)
}

fn is_error_string(s: &str) -> bool {
    s.starts_with("ERR_") || dht_code(s).is_some() || s == "All queries failed" || s == "No nodes to query"
}

fn dht_code(s: &str) -> Option<u16> {
    let (num, rest) = s.split_once(' ')?;
    if num.len() == 3 && !rest.is_empty() { num.parse().ok() } else { None }
}

fn grape_error(status: Option<u16>, text: &str) -> Error {
    let code = dht_code(text).or(status);
    let kind = match (code, text) {
        (_, "ERR_GRAPE_LOOKUP_EMPTY") => ErrorKind::LookupEmpty,
        (_, "ERR_GRAPE_PAYLOAD_SIZE") | (Some(413), _) => ErrorKind::PayloadTooLarge,
        (_, "All queries failed") => ErrorKind::AllQueriesFailed,
        (_, "No nodes to query") => ErrorKind::NoNodes,
        (Some(302), _) => ErrorKind::SeqTooLow,
        (Some(301), _) => ErrorKind::CasMismatch,
        _ => ErrorKind::Grape,
    };
    let msg = match status {
        Some(s) => format!("HTTP {s}: {text}"),
        None => text.to_string(),
    };
    Error::new(kind, msg)
}

fn is_transport_error(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::Closed | ErrorKind::Io)
}

fn map_client_error(url: &str, e: hyper_util::client::legacy::Error) -> Error {
    let kind = if e.is_connect() { ErrorKind::Connect } else { ErrorKind::Closed };
    let mut detail = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    Error::new(kind, format!("request to {url} failed: {detail}"))
}

/// What a keep-announcing loop has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceStatus {
    /// Announces attempted (each with the Link's retries).
    pub attempts: u64,
    /// Announces the Grape accepted.
    pub successes: u64,
    /// Announces that failed.
    pub failures: u64,
    /// The error of the last attempt, `None` when it succeeded: `(kind, message)`.
    pub last_error: Option<(ErrorKind, String)>,
}

/// The handle of a keep-announcing loop started by [`Link::start_announcing`].
///
/// Dropping it does not stop the loop: call [`AnnounceHandle::stop`] or [`Link::stop_announcing`].
#[derive(Debug, Clone)]
pub struct AnnounceHandle {
    name: Arc<str>,
    port: u16,
    token: CancellationToken,
    status: watch::Receiver<AnnounceStatus>,
}

impl AnnounceHandle {
    /// The announced name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The announced port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the loop (an announce in flight is abandoned).
    pub fn stop(&self) {
        self.token.cancel();
    }

    /// True once stopped.
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A snapshot of what the loop has done.
    pub fn status(&self) -> AnnounceStatus {
        self.status.borrow().clone()
    }

    /// The error of the last attempt, if it failed.
    pub fn last_error(&self) -> Option<Error> {
        self.status.borrow().last_error.as_ref().map(|(k, m)| Error::new(*k, m.clone()))
    }

    /// Waits until the first announce finished (the reference's callback), up to `timeout`, and
    /// returns its outcome.
    pub async fn first_result(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.status.clone();
        let fut = rx.wait_for(|s| s.attempts > 0);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(s)) => match &s.last_error {
                Some((k, m)) if s.successes == 0 => Err(Error::new(*k, m.clone())),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(Error::new(ErrorKind::Cancelled, "the announce loop stopped")),
            Err(_) => Err(Error::timeout(format!("no announce finished within {timeout:?}"))),
        }
    }

    /// Waits until the status changes, up to `timeout`, and returns the new status.
    pub async fn changed(&mut self, timeout: Duration) -> Result<AnnounceStatus> {
        match tokio::time::timeout(timeout, self.status.changed()).await {
            Ok(Ok(())) => Ok(self.status()),
            Ok(Err(_)) => Err(Error::new(ErrorKind::Cancelled, "the announce loop stopped")),
            Err(_) => Err(Error::timeout(format!("no announce within {timeout:?}"))),
        }
    }
}

/// A BEP44 mutable item to sign and store with [`Link::put_mutable`].
#[derive(Debug, Clone, PartialEq)]
pub struct MutableItem {
    /// The value (usually a string; numbers, arrays and objects are bencoded as they are).
    pub v: Value,
    /// The sequence number; must grow with each update.
    pub seq: i64,
    /// Optional salt (at most 64 bytes), so one key can hold several items.
    pub salt: Option<String>,
    /// Compare-and-swap: only store if the current sequence number is this one.
    pub cas: Option<i64>,
}

impl MutableItem {
    /// An item with value `v` and sequence number `seq`, no salt and no CAS.
    pub fn new(v: Value, seq: i64) -> Self {
        MutableItem { v, seq, salt: None, cas: None }
    }
}

/// An ed25519 key pair for signing mutable items.
#[derive(Clone)]
pub struct Keypair {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keypair").field("public", &self.public_hex()).finish_non_exhaustive()
    }
}

impl Keypair {
    /// A new random key pair.
    pub fn generate() -> Keypair {
        Keypair { key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    /// The key pair of a 32-byte secret seed in hex (64 hex characters).
    pub fn from_secret_hex(hex_seed: &str) -> Result<Keypair> {
        let bytes = hex::decode(hex_seed.trim()).map_err(|e| Error::invalid(format!("secret key is not hex: {e}")))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| Error::invalid("secret key must be 32 bytes (64 hex characters)"))?;
        Ok(Keypair { key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    /// The 32-byte secret seed in hex. Keep it private.
    pub fn secret_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The 32-byte public key in hex (the item's `k`).
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// The bytes BEP44 signs: `4:salt<n>:<salt>3:seqi<seq>e1:v<bencoded v>`.
    pub fn signed_bytes(item: &MutableItem) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(salt) = &item.salt {
            if salt.len() > 64 {
                return Err(Error::invalid("salt is longer than 64 bytes"));
            }
            out.extend_from_slice(format!("4:salt{}:", salt.len()).as_bytes());
            out.extend_from_slice(salt.as_bytes());
        }
        out.extend_from_slice(format!("3:seqi{}e1:v", item.seq).as_bytes());
        out.extend_from_slice(&bencode(&item.v));
        Ok(out)
    }

    /// The Grape `put` payload of `item` signed with this key.
    pub fn sign_item(&self, item: &MutableItem) -> Result<Value> {
        use ed25519_dalek::Signer;
        let sig = self.key.sign(&Self::signed_bytes(item)?);
        let mut data = json!({
            "v": item.v,
            "k": self.public_hex(),
            "sig": hex::encode(sig.to_bytes()),
            "seq": item.seq,
        });
        if let Some(salt) = &item.salt {
            data["salt"] = Value::String(salt.clone());
        }
        if let Some(cas) = item.cas {
            data["cas"] = json!(cas);
        }
        Ok(data)
    }

    /// The hex target of this key's item with `salt`: SHA-1(public key ‖ salt).
    pub fn target_hex(&self, salt: Option<&str>) -> String {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(self.key.verifying_key().to_bytes());
        if let Some(s) = salt {
            h.update(s.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// The hex target of an immutable value: SHA-1 of its bencoding.
pub fn immutable_target_hex(v: &Value) -> String {
    use sha1::{Digest, Sha1};
    hex::encode(Sha1::digest(bencode(v)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn immutable_target_matches_reference() {
        assert_eq!(immutable_target_hex(&json!("hello world")), "6d33adc2b6b2c14c3036feefb7fedbca1a880527");
    }

    #[test]
    fn signed_bytes_layout() {
        let mut item = MutableItem::new(json!("hello"), 3);
        assert_eq!(Keypair::signed_bytes(&item).unwrap(), b"3:seqi3e1:v5:hello");
        item.salt = Some("ab".into());
        assert_eq!(Keypair::signed_bytes(&item).unwrap(), b"4:salt2:ab3:seqi3e1:v5:hello");
        item.salt = Some("x".repeat(65));
        assert!(Keypair::signed_bytes(&item).is_err());
    }

    #[test]
    fn signature_verifies_and_keys_round_trip() {
        use ed25519_dalek::Verifier;
        let k = Keypair::generate();
        let k2 = Keypair::from_secret_hex(&k.secret_hex()).unwrap();
        assert_eq!(k.public_hex(), k2.public_hex());
        let item = MutableItem { v: json!("v1"), seq: 1, salt: Some("s".into()), cas: Some(0) };
        let data = k.sign_item(&item).unwrap();
        let sig = hex::decode(data["sig"].as_str().unwrap()).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        k.key.verifying_key().verify(&Keypair::signed_bytes(&item).unwrap(), &sig).unwrap();
        assert_eq!(data["cas"], json!(0));
        assert_eq!(data["salt"], json!("s"));
        assert!(Keypair::from_secret_hex("zz").is_err());
        assert!(Keypair::from_secret_hex("00").is_err());
    }

    #[test]
    fn extreme_durations_do_not_panic() {
        let _ = jitter(Duration::MAX);
        let _ = jitter(Duration::ZERO);
    }

    #[test]
    fn jitter_is_within_bounds() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1500), "{d:?}");
        }
    }

    #[test]
    fn grape_error_strings_are_classified() {
        assert!(is_error_string("ERR_GRAPE_SERVICE_PORT"));
        assert!(is_error_string("302 sequence number less than current"));
        assert!(!is_error_string("6d33adc2b6b2c14c3036feefb7fedbca1a880527"));
        assert_eq!(grape_error(None, "302 sequence number less than current").kind(), ErrorKind::SeqTooLow);
        assert_eq!(grape_error(Some(413), "ERR_GRAPE_PAYLOAD_SIZE").kind(), ErrorKind::PayloadTooLarge);
        assert_eq!(grape_error(Some(500), "ERR_GRAPE_PAYLOAD_INVALID").kind(), ErrorKind::Grape);
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(Link::with_grape("127.0.0.1:30001").is_err());
        assert!(Link::with_grape("http://").is_err());
        assert!(Link::with_grape("http://127.0.0.1:30001/").is_ok());
    }

    #[tokio::test]
    async fn dead_grape_gives_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let link = Link::with_grape(format!("http://127.0.0.1:{port}")).unwrap();
        let e = link.lookup("x").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
        let e = link.put_value(&json!("x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    }
}
