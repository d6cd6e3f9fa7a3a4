//! Link for embedders: lookups, announces, put/get with completion closures.

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::link::{Keypair, Link, LinkConfig, MutableItem};

use super::{Ops, Runtime};

/// How long closing a handle waits for completions already running on other threads.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A [`Link`] driven by an embed [`Runtime`]. Every one-shot call takes a completion that fires
/// exactly once (see [`Ops`]); [`EmbedLink::close`] cancels what is in flight.
#[derive(Debug)]
pub struct EmbedLink {
    rt: Runtime,
    link: Link,
    ops: Ops,
}

impl EmbedLink {
    /// A Link to the Grape HTTP API at `config.grape` (`http://host:port`).
    pub fn new(rt: &Runtime, config: LinkConfig) -> Result<EmbedLink> {
        let _g = rt.handle().enter();
        Ok(EmbedLink { rt: rt.clone(), link: Link::new(config)?, ops: Ops::new() })
    }

    /// The core Link (to build servers and clients on).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Looks `name` up; completes with the `"host:port"` list as a JSON array text.
    pub fn lookup(&self, name: String, done: impl FnOnce(Result<String>) + Send + 'static) {
        let link = self.link.clone();
        self.ops.spawn(
            &self.rt,
            async move {
                let v = link.lookup(&name).await?;
                Ok(serde_json::to_string(&v)?)
            },
            done,
        );
    }

    /// Announces `name` on `port` once.
    pub fn announce(&self, name: String, port: u16, done: impl FnOnce(Result<()>) + Send + 'static) {
        let link = self.link.clone();
        self.ops.spawn(&self.rt, async move { link.announce(&name, port).await }, done);
    }

    /// Keeps announcing `name` on `port` every `interval` (jittered) until stopped or closed.
    pub fn start_announcing(&self, name: &str, port: u16, interval: Duration) -> Result<()> {
        if self.ops.is_closed() {
            return Err(Error::new(ErrorKind::InvalidState, "the link is closed"));
        }
        let _g = self.rt.handle().enter();
        let _ = self.link.start_announcing(name, port, interval);
        Ok(())
    }

    /// Stops the keep-announcing loop of `(name, port)`; false when none ran.
    pub fn stop_announcing(&self, name: &str, port: u16) -> bool {
        self.link.stop_announcing(name, port)
    }

    /// Removes the announce of `name` on `port` from the Grapes at once (see
    /// [`Link::unannounce`]); completes with the number of DHT nodes that removed it.
    pub fn unannounce(&self, name: String, port: u16, done: impl FnOnce(Result<u64>) + Send + 'static) {
        let link = self.link.clone();
        self.ops.spawn(&self.rt, async move { link.unannounce(&name, port).await }, done);
    }

    /// Pins `name` to the service's ed25519 public keys (hex; empty unpins): lookups, and the
    /// requests of clients built on this Link, use only addresses with a valid signed proof
    /// under one of them (see [`Link::pin_service`]).
    pub fn pin_service(&self, name: &str, keys_hex: &[&str]) -> Result<()> {
        self.link.pin_service(name, keys_hex)
    }

    /// Makes every announce of `name` through this Link (and servers built on it) publish signed
    /// proofs under each of `keys`, valid `ttl` (see [`Link::sign_announcements`]). No keys stops
    /// signing.
    pub fn sign_announcements(&self, name: &str, keys: Vec<Keypair>, ttl: Duration) -> Result<()> {
        if keys.is_empty() {
            return self.link.sign_announcements(name, None);
        }
        let mut signer = crate::link::signed::AnnounceSigner::new(keys);
        signer.ttl = ttl;
        self.link.sign_announcements(name, Some(signer))
    }

    /// Stores the JSON value `v_json` as an immutable item; completes with the hex hash.
    pub fn put(&self, v_json: &str, done: impl FnOnce(Result<String>) + Send + 'static) {
        match super::rpc::parse_json(v_json) {
            Ok(v) => {
                let link = self.link.clone();
                self.ops.spawn(&self.rt, async move { link.put_value(&v).await }, done);
            }
            Err(e) => self.fail(e, done),
        }
    }

    /// Signs and stores a mutable item; completes with the hex hash (target).
    pub fn put_mutable(&self, key: &Keypair, item: MutableItem, done: impl FnOnce(Result<String>) + Send + 'static) {
        let link = self.link.clone();
        let key = key.clone();
        self.ops.spawn(&self.rt, async move { link.put_mutable(&key, &item).await }, done);
    }

    /// Reads the item with hex target `hash` (with `salt` for salted mutable items); completes
    /// with the item as JSON text (`{"v":..., "id":..., ...}`), or `null` when there is none.
    pub fn get(&self, hash: String, salt: Option<String>, done: impl FnOnce(Result<String>) + Send + 'static) {
        let link = self.link.clone();
        self.ops.spawn(
            &self.rt,
            async move {
                let v: Option<Value> = match salt {
                    Some(s) => link.get_salted(&hash, &s).await?,
                    None => link.get(&hash).await?,
                };
                Ok(v.unwrap_or(Value::Null).to_string())
            },
            done,
        );
    }

    /// Fires `done` with `e` the way an operation would (on a worker thread).
    fn fail<T: Send + 'static>(&self, e: Error, done: impl FnOnce(Result<T>) + Send + 'static) {
        self.ops.spawn(&self.rt, async move { Err(e) }, done);
    }

    /// Cancels calls in flight (their completions fire `Cancelled`) and stops every
    /// keep-announcing loop.
    pub fn close(&self) {
        self.ops.close(CLOSE_WAIT);
        self.link.stop();
    }
}

impl Drop for EmbedLink {
    fn drop(&mut self) {
        self.close();
    }
}
