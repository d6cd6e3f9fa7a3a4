//! The RPC client peer (the reference's `PeerRPCClient`), generic over the transport.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{BoxFuture, ClientTransport, OutgoingRequest};
use crate::error::{Error, ErrorKind, Result};
use crate::link::Link;

/// The forms a result can take from [`PeerRpcClient::send`]: a parsed [`Value`], or a
/// `Box<RawValue>` with the worker's JSON text as it came. Sealed: no other forms.
pub trait ReplyForm: Sized + Send + 'static + private::Sealed {
    /// Sends `out` to `dest` on `transport`, asking for this form of result.
    #[doc(hidden)]
    fn call(transport: &dyn ClientTransport, dest: &str, out: OutgoingRequest) -> BoxFuture<'static, Result<Self>>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for serde_json::Value {}
    impl Sealed for Box<serde_json::value::RawValue> {}
}

impl ReplyForm for Value {
    fn call(transport: &dyn ClientTransport, dest: &str, out: OutgoingRequest) -> BoxFuture<'static, Result<Self>> {
        transport.request(dest, out)
    }
}

impl ReplyForm for Box<RawValue> {
    fn call(transport: &dyn ClientTransport, dest: &str, out: OutgoingRequest) -> BoxFuture<'static, Result<Self>> {
        transport.request_raw(dest, out)
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct PeerRpcClientConfig {
    /// Once this many of a key's destinations have live connections, new requests go only to
    /// those (the reference's `maxActiveKeyDests`, 5).
    pub max_active_key_dests: usize,
    /// Timeout of a request attempt when [`RequestOptions::timeout`] is `None`. The reference has
    /// none (requests can wait forever); we default to 30 s.
    pub default_timeout: Duration,
    /// A worker that could not be connected to (refused, unreachable, connect timeout) is
    /// avoided by `request` for this long while its key has other workers, since the Grapes keep
    /// returning a dead worker until its announce expires. Each further failure doubles the time,
    /// up to [`PeerRpcClientConfig::dead_worker_max_backoff`]; a worker that answers is trusted
    /// again at once. When every worker of a key is avoided, they are tried anyway. Default 1 s;
    /// `Duration::ZERO` turns this off (the reference has no such memory).
    pub dead_worker_backoff: Duration,
    /// The longest a dead worker is avoided for. Default 30 s.
    pub dead_worker_max_backoff: Duration,
    /// A request whose connection to a worker failed (so nothing was sent, no handler ran) goes
    /// to another worker of the key without using up one of [`RequestOptions::retry`]'s
    /// attempts, as long as there are workers not tried yet. Default true; the reference fails
    /// the request (or retries on any worker, the dead one included, when `retry` is set).
    pub connect_failover: bool,
}

impl Default for PeerRpcClientConfig {
    fn default() -> Self {
        PeerRpcClientConfig {
            max_active_key_dests: 5,
            default_timeout: Duration::from_secs(30),
            dead_worker_backoff: Duration::from_secs(1),
            dead_worker_max_backoff: Duration::from_secs(30),
            connect_failover: true,
        }
    }
}

/// How many dead workers a client remembers; past that the one whose avoidance ends first is
/// forgotten.
const MAX_DEAD_WORKERS: usize = 4096;

/// Workers that failed to connect, and until when they are avoided.
#[derive(Debug, Default)]
struct DeadWorkers {
    /// Fast path: false while `map` is empty (no lock on the request path).
    any: AtomicBool,
    /// Destination → (avoided until, consecutive connect failures).
    map: Mutex<HashMap<String, (Instant, u32)>>,
}

impl DeadWorkers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u32)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connect to `dest` failed: avoid it for `base` × 2^(failures-1), at most `max`.
    fn failed(&self, dest: &str, base: Duration, max: Duration) {
        if base.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut m = self.lock();
        if !m.contains_key(dest) && m.len() >= MAX_DEAD_WORKERS {
            m.retain(|_, (until, _)| *until > now);
            if m.len() >= MAX_DEAD_WORKERS
                && let Some(k) = m.iter().min_by_key(|(_, (until, _))| *until).map(|(k, _)| k.clone())
            {
                m.remove(&k);
            }
        }
        let e = m.entry(dest.to_string()).or_insert((now, 0));
        e.1 = e.1.saturating_add(1);
        let backoff = base.saturating_mul(1u32 << (e.1 - 1).min(20)).min(max.max(base));
        e.0 = now.checked_add(backoff).unwrap_or(now);
        self.any.store(true, Ordering::Relaxed);
    }

    /// `dest` answered: it is alive.
    fn alive(&self, dest: &str) {
        if self.any.load(Ordering::Relaxed) {
            let mut m = self.lock();
            m.remove(dest);
            if m.is_empty() {
                self.any.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Whether `dest` is being avoided now, in the locked map `m`.
    fn avoided(m: &HashMap<String, (Instant, u32)>, dest: &str, now: Instant) -> bool {
        m.get(dest).is_some_and(|(until, _)| *until > now)
    }
}

/// Per-call options of [`PeerRpcClient::request`] and [`PeerRpcClient::map`].
#[derive(Debug, Clone, Default)]
pub struct RequestOptions {
    /// Give up an attempt after this long (`None`: the client's `default_timeout`).
    pub timeout: Option<Duration>,
    /// Total attempts (0 and 1 both mean one). Each retry picks another destination when there is
    /// one. `request` only.
    pub retry: u32,
    /// Also retry when the remote handler answered an error (the reference always does; we do
    /// not by default, since a handler error is an answer).
    pub retry_remote: bool,
    /// HTTP: gzip the request and the reply (`grc-compress: gzip`).
    pub compress: bool,
    /// Send to this `"ip:port"` without a lookup. `request` only.
    pub dest: Option<String>,
    /// Overrides the client's `max_active_key_dests`.
    pub max_active_key_dests: Option<usize>,
    /// `map` only: ask at most this many random workers (0: all).
    pub limit: usize,
}

/// Finds the workers of a key in place of the Link's lookup (e.g. a uTP broker, which knows
/// their external endpoints behind NATs; see
/// [`BrokerClient`](crate::transport::utp::broker::BrokerClient)).
pub trait Resolve: Send + Sync + 'static {
    /// The `"host:port"` destinations of `key`.
    fn resolve(&self, key: &str) -> BoxFuture<'static, Result<Arc<[String]>>>;

    /// Forgets what is cached for `key` (a destination of it failed to connect).
    fn invalidate(&self, key: &str) {
        let _ = key;
    }
}

/// Sends requests to the workers announcing a key, through one transport.
#[derive(Clone)]
pub struct PeerRpcClient {
    link: Link,
    transport: Arc<dyn ClientTransport>,
    config: PeerRpcClientConfig,
    dead: Arc<DeadWorkers>,
    resolver: Option<Arc<dyn Resolve>>,
}

impl std::fmt::Debug for PeerRpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerRpcClient").field("link", &self.link).field("config", &self.config).finish_non_exhaustive()
    }
}

impl PeerRpcClient {
    /// A client that finds workers with `link` and reaches them through `transport`.
    pub fn new(link: Link, transport: Arc<dyn ClientTransport>, config: PeerRpcClientConfig) -> PeerRpcClient {
        PeerRpcClient { link, transport, config, dead: Arc::default(), resolver: None }
    }

    /// Finds workers with `resolver` instead of the Link's lookup.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> PeerRpcClient {
        self.resolver = Some(resolver);
        self
    }

    /// The destinations of `key`: the resolver's, or the Link's lookup.
    async fn lookup(&self, key: &str) -> Result<Arc<[String]>> {
        match &self.resolver {
            Some(r) => r.resolve(key).await,
            None => self.link.lookup_shared(key).await,
        }
    }

    fn invalidate(&self, key: &str) {
        match &self.resolver {
            Some(r) => r.invalidate(key),
            None => self.link.invalidate(key),
        }
    }

    /// Whether `request` avoids `dest` now, after it failed to connect (see
    /// [`PeerRpcClientConfig::dead_worker_backoff`]).
    pub fn is_avoided(&self, dest: &str) -> bool {
        self.dead.any.load(Ordering::Relaxed) && DeadWorkers::avoided(&self.dead.lock(), dest, Instant::now())
    }

    /// The Link.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn ClientTransport> {
        &self.transport
    }

    /// Closes the transport's connections (the reference's `stop()`).
    pub fn stop(&self) {
        self.transport.close();
    }

    /// Looks `key` up and picks one destination the way `request` does.
    pub async fn pick_dest(&self, key: &str, opts: &RequestOptions) -> Result<String> {
        let dests = self.lookup(key).await?;
        self.choose(&dests, &HashSet::new(), opts).ok_or_else(|| Error::new(ErrorKind::LookupEmpty, key.to_string()))
    }

    /// Picks the destination of a `request` of `key` without waiting: `opts.dest`, or a choice
    /// among the key's cached lookup, made as [`PeerRpcClient::pick_dest`] makes it, counting
    /// `extra_active(dest)` more live connections per destination (sockets kept outside the
    /// transport). `None` when the lookup is not cached, or with a resolver.
    pub fn pick_cached(&self, key: &str, opts: &RequestOptions, extra_active: &dyn Fn(&str) -> usize) -> Option<String> {
        if let Some(d) = &opts.dest {
            return Some(d.clone());
        }
        if self.resolver.is_some() {
            return None;
        }
        let dests = self.link.cached_lookup(key)?;
        self.choose_with(&dests, &HashSet::new(), opts, &|d| self.transport.active_connections(d) + extra_active(d))
    }

    /// The timeout of a request whose options give none.
    pub fn default_timeout(&self) -> Duration {
        self.config.default_timeout
    }

    /// Records that `dest` answered (it is no longer avoided), as `request` does.
    pub(crate) fn mark_alive(&self, dest: &str) {
        self.dead.alive(dest);
    }

    fn choose(&self, dests: &[String], exclude: &HashSet<String>, opts: &RequestOptions) -> Option<String> {
        self.choose_with(dests, exclude, opts, &|d| self.transport.active_connections(d))
    }

    fn choose_with(
        &self,
        dests: &[String],
        exclude: &HashSet<String>,
        opts: &RequestOptions,
        active: &dyn Fn(&str) -> usize,
    ) -> Option<String> {
        if let [only] = dests {
            // One worker: the choice is forced (whether excluded or not, as below).
            return Some(only.clone());
        }
        let mut candidates: Vec<&String> = dests.iter().filter(|d| !exclude.contains(*d)).collect();
        if candidates.is_empty() {
            candidates = dests.iter().collect();
        }
        // Workers that recently failed to connect are skipped while others remain.
        if self.dead.any.load(Ordering::Relaxed) {
            let (m, now) = (self.dead.lock(), Instant::now());
            if candidates.iter().any(|d| !DeadWorkers::avoided(&m, d, now)) {
                candidates.retain(|d| !DeadWorkers::avoided(&m, d, now));
            }
        }
        let max = opts.max_active_key_dests.unwrap_or(self.config.max_active_key_dests).max(1);
        let active: Vec<&String> = candidates.iter().copied().filter(|d| active(d) > 0).collect();
        let pool = if active.len() >= max { active } else { candidates };
        pool.choose(&mut rand::thread_rng()).map(|d| (*d).clone())
    }

    fn outgoing(&self, key: &Arc<str>, payload_json: &Arc<str>, opts: &RequestOptions) -> OutgoingRequest {
        OutgoingRequest {
            rid: crate::rpc::new_rid(),
            key: key.clone(),
            payload_json: payload_json.clone(),
            timeout: Some(opts.timeout.unwrap_or(self.config.default_timeout)),
            compress: opts.compress,
        }
    }

    /// Sends `payload` to one worker announcing `key` and returns its result.
    ///
    /// A remote handler's error is an [`ErrorKind::Remote`] error with the remote message.
    pub async fn request<T: Serialize + ?Sized>(&self, key: &str, payload: &T, opts: &RequestOptions) -> Result<Value> {
        let json: Arc<str> = serde_json::to_string(payload)?.into();
        self.send(key, json, opts).await
    }

    /// The one request path under [`PeerRpcClient::request`]: `payload_json` is already JSON
    /// text, `key` may be shared (an `Arc<str>` is not copied per request), and the result comes
    /// back as `R`: a [`Value`], or a `Box<RawValue>` holding the JSON text exactly as the worker
    /// sent it (never parsed; for embedders and proxies that hand results on as text).
    pub async fn send<R: ReplyForm>(&self, key: impl Into<Arc<str>>, payload_json: Arc<str>, opts: &RequestOptions) -> Result<R> {
        self.request_with(key.into(), payload_json, opts, R::call).await
    }

    /// The request loop (lookup, destination choice, retries) around one transport call.
    async fn request_with<T>(
        &self,
        key: Arc<str>,
        payload_json: Arc<str>,
        opts: &RequestOptions,
        call: impl Fn(&dyn ClientTransport, &str, OutgoingRequest) -> BoxFuture<'static, Result<T>>,
    ) -> Result<T> {
        let mut dests: Arc<[String]> = match &opts.dest {
            Some(d) => vec![d.clone()].into(),
            None => self.lookup(&key).await?,
        };
        let attempts = opts.retry.max(1);
        let mut used = 0;
        let mut exclude = HashSet::new();
        let mut last = None;
        let mut looked_again = false;
        while used < attempts {
            let Some(dest) = self.choose(&dests, &exclude, opts) else { break };
            match call(&*self.transport, &dest, self.outgoing(&key, &payload_json, opts)).await {
                Ok(v) => {
                    self.dead.alive(&dest);
                    return Ok(v);
                }
                Err(e) if e.is_remote() && !opts.retry_remote => {
                    self.dead.alive(&dest);
                    return Err(e);
                }
                Err(e) => {
                    let unsent = e.kind() == ErrorKind::Connect;
                    if opts.dest.is_none() && unsent {
                        // A dead worker: look the key up afresh next time, and avoid it for a
                        // while (the Grapes return it until its announce expires).
                        self.invalidate(&key);
                        self.dead.failed(&dest, self.config.dead_worker_backoff, self.config.dead_worker_max_backoff);
                    }
                    last = Some(e);
                    // Nothing reached a worker: try another one for free while some are untried.
                    let fresh = exclude.insert(dest);
                    if self.config.connect_failover && unsent && fresh {
                        if dests.iter().any(|d| !exclude.contains(d)) {
                            continue;
                        }
                        // Every worker the lookup gave refused: they may have been replaced
                        // (a rolling restart) by workers the cached lookup does not have yet.
                        // Look the key up afresh, once.
                        if opts.dest.is_none() && !looked_again {
                            looked_again = true;
                            if let Ok(d) = self.lookup(&key).await
                                && d.iter().any(|x| !exclude.contains(x))
                            {
                                dests = d;
                                continue;
                            }
                        }
                    }
                    used += 1;
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::LookupEmpty, key.to_string())))
    }

    /// Sends `payload` to every worker announcing `key` (or `opts.limit` random ones) at once and
    /// returns their results in destination order; the first error fails the call.
    pub async fn map<T: Serialize + ?Sized>(&self, key: &str, payload: &T, opts: &RequestOptions) -> Result<Vec<Value>> {
        self.map_settled(key, payload, opts).await?.into_iter().map(|(_, r)| r).collect()
    }

    /// Like [`PeerRpcClient::map`], returning each worker's address and outcome.
    pub async fn map_settled<T: Serialize + ?Sized>(
        &self,
        key: &str,
        payload: &T,
        opts: &RequestOptions,
    ) -> Result<Vec<(String, Result<Value>)>> {
        let json: Arc<str> = serde_json::to_string(payload)?.into();
        let key: Arc<str> = key.into();
        let mut dests = self.lookup(&key).await?.to_vec();
        if opts.limit > 0 {
            dests.shuffle(&mut rand::thread_rng());
            dests.truncate(opts.limit);
        }
        let futs = dests.iter().map(|d| self.transport.request(d, self.outgoing(&key, &json, opts)));
        let results = futures_util::future::join_all(futs).await;
        Ok(dests.into_iter().zip(results).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_worker_backoff_doubles_up_to_the_cap_and_ends_when_it_answers() {
        let d = DeadWorkers::default();
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(5));
        for want in [1, 2, 4, 5, 5] {
            let before = Instant::now();
            d.failed("a:1", base, max);
            let until = d.lock()["a:1"].0;
            let last = until.duration_since(before);
            assert!(last >= Duration::from_secs(want) && last < Duration::from_secs(want) + Duration::from_millis(500), "{last:?}");
        }
        assert!(DeadWorkers::avoided(&d.lock(), "a:1", Instant::now()));
        assert!(!DeadWorkers::avoided(&d.lock(), "b:1", Instant::now()));
        d.alive("a:1");
        assert!(!d.any.load(Ordering::Relaxed) && d.lock().is_empty());
        // Zero turns it off.
        d.failed("a:1", Duration::ZERO, max);
        assert!(!d.any.load(Ordering::Relaxed));
    }

    #[test]
    fn dead_workers_are_bounded() {
        let d = DeadWorkers::default();
        for i in 0..MAX_DEAD_WORKERS + 100 {
            // Later ones are avoided longer: the earliest-ending are forgotten first.
            d.failed(&format!("10.0.0.1:{i}"), Duration::from_secs(1 + i as u64), Duration::from_secs(u64::MAX >> 8));
        }
        let m = d.lock();
        assert_eq!(m.len(), MAX_DEAD_WORKERS);
        assert!(!m.contains_key("10.0.0.1:0") && m.contains_key(&format!("10.0.0.1:{}", MAX_DEAD_WORKERS + 99)));
    }
}
