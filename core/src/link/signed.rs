//! Signed announcements: proof, signed with a service's ed25519 key, that an address serves a
//! name until a given time. See `docs/signed-announce.md` for the design and its threat model.
//!
//! A worker publishes, next to its ordinary announce, one BEP44 mutable item per (service key,
//! name, port):
//!
//! * `k` = the service's public key; `salt` = [`proof_salt`]`(name, port)`, i.e.
//!   `"ga1:" + hex(SHA-1(name ‖ 0x00 ‖ port as 2 bytes big-endian))` (44 ASCII bytes);
//! * `v` = a JSON text (a string on the wire, so that every Grape's `/get` returns it unchanged):
//!   `{"n":"<name>","p":<port>,"ips":["<ip>",...],"e":<expiry, unix seconds>}` (IPv4 and IPv6
//!   addresses in their usual text forms; a verifier that knows only IPv4 skips the others);
//! * `seq` = the time it was signed, in unix milliseconds (a newer proof always wins).
//!
//! A client pinned to a service's keys ([`super::Link::pin_service`]) keeps an address
//! `ip:port` returned by a lookup only when, for one of the keys, the item at
//! `SHA-1(k ‖ proof_salt(name, port))` verifies ([`verify_proof`]): a valid signature by that
//! key (checked by the client itself, whatever the Grape says), the same name and port, the IP
//! among `ips`, and an expiry in the future.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha1::{Digest, Sha1};

use super::{Keypair, MutableItem};
use crate::error::{Error, Result};

/// The salt of the proof of `name` served on `port`.
pub fn proof_salt(name: &str, port: u16) -> String {
    let mut h = Sha1::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(port.to_be_bytes());
    format!("ga1:{}", hex::encode(h.finalize()))
}

/// The hex target of the proof of `name` on `port` under the public key `k`.
pub fn proof_target(k: &[u8; 32], name: &str, port: u16) -> String {
    let mut h = Sha1::new();
    h.update(k);
    h.update(proof_salt(name, port).as_bytes());
    hex::encode(h.finalize())
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a proof says: `name` is served on `port` at each of `ips` until `expires` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceProof {
    /// The service name.
    pub name: String,
    /// The service port.
    pub port: u16,
    /// The addresses (IPv4, IPv6) the Grapes see the worker at.
    pub ips: Vec<IpAddr>,
    /// Unix seconds after which the proof is worthless.
    pub expires: u64,
}

/// Most IPs in one proof (the item's value must stay under 1000 bytes).
pub const MAX_PROOF_IPS: usize = 16;

impl AnnounceProof {
    /// The item's value: the JSON text described in the module docs.
    pub fn to_v(&self) -> String {
        let ips: Vec<String> = self.ips.iter().map(IpAddr::to_string).collect();
        json!({"n": self.name, "p": self.port, "ips": ips, "e": self.expires}).to_string()
    }

    /// Parses an item's value.
    pub fn parse(v: &str) -> Option<AnnounceProof> {
        let j: Value = serde_json::from_str(v).ok()?;
        Some(AnnounceProof {
            name: j.get("n")?.as_str()?.to_string(),
            port: u16::try_from(j.get("p")?.as_u64()?).ok()?,
            ips: j.get("ips")?.as_array()?.iter().take(MAX_PROOF_IPS).filter_map(|x| x.as_str()?.parse().ok()).collect(),
            expires: j.get("e")?.as_u64()?,
        })
    }

    /// The `/put` payload of this proof signed with `key` (seq = now in unix milliseconds).
    pub fn sign(&self, key: &Keypair) -> Result<Value> {
        if self.ips.is_empty() || self.ips.len() > MAX_PROOF_IPS {
            return Err(Error::invalid(format!("a proof names 1 to {MAX_PROOF_IPS} IP addresses")));
        }
        let seq = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let item = MutableItem {
            v: Value::String(self.to_v()),
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            salt: Some(proof_salt(&self.name, self.port)),
            cas: None,
        };
        if Keypair::signed_bytes(&item)?.len() > 1100 {
            return Err(Error::invalid("the proof is too large (a service name of at most ~800 bytes)"));
        }
        key.sign_item(&item)
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// No item at the proof's target.
    Missing,
    /// The item is not shaped like a proof (fields missing, not JSON).
    Malformed,
    /// The item's key is not the pinned key.
    WrongKey,
    /// The signature does not verify.
    BadSignature,
    /// It proves another name, port or IP.
    OtherAddress,
    /// Its expiry has passed.
    Expired,
}

/// Checks an item read with `/get` (the Grape's JSON: `v`, `k`, `sig`, `seq`; `salt` is not
/// needed) as the proof that `addr` serves `name` under the public key `key`, at `now` (unix
/// seconds). The signature is verified here: a Grape is not trusted to have done it.
pub fn verify_proof(
    item: &Value,
    key: &[u8; 32],
    name: &str,
    addr: SocketAddr,
    now: u64,
) -> std::result::Result<AnnounceProof, ProofError> {
    let field = |f: &str| item.get(f).and_then(Value::as_str).ok_or(ProofError::Malformed);
    let k = hex::decode(field("k")?).map_err(|_| ProofError::Malformed)?;
    if k.as_slice() != key {
        return Err(ProofError::WrongKey);
    }
    let sig: [u8; 64] = hex::decode(field("sig")?).ok().and_then(|s| s.try_into().ok()).ok_or(ProofError::Malformed)?;
    let v = field("v")?;
    let seq = item.get("seq").and_then(Value::as_i64).ok_or(ProofError::Malformed)?;
    let salt = proof_salt(name, addr.port());
    let mut v_bencoded = Vec::with_capacity(v.len() + 8);
    v_bencoded.extend_from_slice(format!("{}:", v.len()).as_bytes());
    v_bencoded.extend_from_slice(v.as_bytes());
    let data = crate::dht::store::sig_data(Some(salt.as_bytes()), seq, &v_bencoded);
    if !crate::dht::store::verify_sig(key, &sig, &data) {
        return Err(ProofError::BadSignature);
    }
    let proof = AnnounceProof::parse(v).ok_or(ProofError::Malformed)?;
    let ip = addr.ip().to_canonical();
    if proof.name != name || proof.port != addr.port() || !proof.ips.iter().any(|p| p.to_canonical() == ip) {
        return Err(ProofError::OtherAddress);
    }
    if proof.expires <= now {
        return Err(ProofError::Expired);
    }
    Ok(proof)
}

/// How a worker signs its announces ([`super::Link::sign_announcements`]).
#[derive(Debug, Clone)]
pub struct AnnounceSigner {
    /// The service keys: one proof is published under each (two during a key rotation).
    pub keys: Vec<Keypair>,
    /// How long a proof is valid; it is published again once half of it has passed. Default
    /// 10 minutes.
    pub ttl: Duration,
    /// The addresses (IPv4, IPv6) the Grapes see this worker at. Empty (the default): the
    /// addresses this host sends from towards its Grape and towards the default routes of both
    /// families (see [`default_ips`]); set them on hosts with several networks or behind NAT.
    pub ips: Vec<IpAddr>,
}

impl AnnounceSigner {
    /// Signs with `keys`, the default TTL and IPs.
    pub fn new(keys: Vec<Keypair>) -> AnnounceSigner {
        AnnounceSigner { keys, ttl: Duration::from_secs(600), ips: Vec::new() }
    }
}

/// The addresses this host sends from towards `grape_host` and towards the default routes of
/// IPv4 and IPv6 (found by connecting UDP sockets, which sends nothing; a family without a route
/// gives none). Loopback is kept only when nothing else is found or the Grape itself is on
/// loopback. A dual-stack Grape announces over IPv6 only when told to, but a proof naming the
/// host's IPv6 address costs nothing and covers it when it does.
pub fn default_ips(grape_host: Option<IpAddr>) -> Vec<IpAddr> {
    let from = |to: IpAddr| -> Option<IpAddr> {
        let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let s = std::net::UdpSocket::bind((any, 0)).ok()?;
        s.connect((to, 9)).ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    };
    // Documentation addresses (RFC 5737, RFC 3849): only the route to them matters.
    let routes = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))];
    let mut out = Vec::new();
    for to in grape_host.into_iter().chain(routes) {
        if let Some(ip) = from(to)
            && !out.contains(&ip)
            && (!ip.is_loopback() || Some(to) == grape_host)
        {
            out.push(ip);
        }
    }
    if out.is_empty() {
        out.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    out
}

/// Parses a 64-hex-character ed25519 public key.
pub fn parse_public_key(hex_key: &str) -> Result<[u8; 32]> {
    let b = hex::decode(hex_key.trim()).map_err(|e| Error::invalid(format!("service key is not hex: {e}")))?;
    let k: [u8; 32] = b.try_into().map_err(|_| Error::invalid("a service key is 32 bytes (64 hex characters)"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&k).map_err(|_| Error::invalid("not an ed25519 public key"))?;
    Ok(k)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item_of(payload: &Value) -> Value {
        // What a Grape's /get answers: v, k, sig, seq (and id, token).
        json!({"id": "00", "k": payload["k"], "seq": payload["seq"], "sig": payload["sig"], "token": null, "v": payload["v"]})
    }

    #[test]
    fn proofs_verify_and_every_bad_one_is_refused() {
        let key = Keypair::generate();
        let k: [u8; 32] = hex::decode(key.public_hex()).unwrap().try_into().unwrap();
        let addr: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        let now = unix_now();
        let proof = AnnounceProof { name: "svc".into(), port: 4000, ips: vec![addr.ip(), Ipv4Addr::LOCALHOST.into()], expires: now + 60 };
        let put = proof.sign(&key).unwrap();
        assert_eq!(put["salt"], json!(proof_salt("svc", 4000)));
        assert_eq!(key.target_hex(Some(&proof_salt("svc", 4000))), proof_target(&k, "svc", 4000));
        let item = item_of(&put);
        assert_eq!(verify_proof(&item, &k, "svc", addr, now), Ok(proof.clone()));
        assert_eq!(verify_proof(&item, &k, "svc", "127.0.0.1:4000".parse().unwrap(), now).map(|p| p.port), Ok(4000));
        // Another IP, port or name.
        assert_eq!(verify_proof(&item, &k, "svc", "10.9.9.9:4000".parse().unwrap(), now), Err(ProofError::OtherAddress));
        assert_eq!(
            verify_proof(&item, &k, "svc", "10.1.2.3:4001".parse().unwrap(), now),
            Err(ProofError::BadSignature),
            "the salt covers the port"
        );
        assert_eq!(verify_proof(&item, &k, "other", addr, now), Err(ProofError::BadSignature), "the salt covers the name");
        // Expired.
        assert_eq!(verify_proof(&item, &k, "svc", addr, now + 60), Err(ProofError::Expired));
        // Forged: tampered value, signature of another key, another key.
        let mut forged = item.clone();
        forged["v"] = json!(proof.to_v().replace("10.1.2.3", "10.6.6.6"));
        assert_eq!(verify_proof(&forged, &k, "svc", "10.6.6.6:4000".parse().unwrap(), now), Err(ProofError::BadSignature));
        let thief = Keypair::generate();
        let mut stolen = item_of(&proof.sign(&thief).unwrap());
        assert_eq!(verify_proof(&stolen, &k, "svc", addr, now), Err(ProofError::WrongKey));
        stolen["k"] = json!(key.public_hex());
        assert_eq!(verify_proof(&stolen, &k, "svc", addr, now), Err(ProofError::BadSignature));
        // Replay of a proof under another seq: the signature covers the seq.
        let mut replay = item.clone();
        replay["seq"] = json!(put["seq"].as_i64().unwrap() + 1);
        assert_eq!(verify_proof(&replay, &k, "svc", addr, now), Err(ProofError::BadSignature));
        assert_eq!(verify_proof(&json!({"v": "x"}), &k, "svc", addr, now), Err(ProofError::Malformed));
        // Bad proofs to sign.
        let none = AnnounceProof { ips: vec![], ..proof.clone() };
        assert!(none.sign(&key).is_err());
        let huge = AnnounceProof { name: "n".repeat(2000), ..proof };
        assert!(huge.sign(&key).is_err());
    }

    #[test]
    fn ipv6_addresses_are_proven_in_either_form() {
        let key = Keypair::generate();
        let k: [u8; 32] = hex::decode(key.public_hex()).unwrap().try_into().unwrap();
        let now = unix_now();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let proof = AnnounceProof { name: "svc".into(), port: 4000, ips: vec!["10.1.2.3".parse().unwrap(), v6], expires: now + 60 };
        assert!(proof.to_v().contains(r#""ips":["10.1.2.3","2001:db8::7"]"#), "{}", proof.to_v());
        let item = item_of(&proof.sign(&key).unwrap());
        for ok in ["[2001:db8::7]:4000", "[2001:0db8:0:0::7]:4000", "10.1.2.3:4000", "[::ffff:10.1.2.3]:4000"] {
            assert_eq!(verify_proof(&item, &k, "svc", ok.parse().unwrap(), now).map(|p| p.ips.len()), Ok(2), "{ok}");
        }
        for other in ["[2001:db8::8]:4000", "[::1]:4000"] {
            assert_eq!(verify_proof(&item, &k, "svc", other.parse().unwrap(), now), Err(ProofError::OtherAddress), "{other}");
        }
        // A proof of an IPv6 address read by a verifier that knows only IPv4 still parses.
        let parsed = AnnounceProof::parse(r#"{"n":"svc","p":1,"ips":["::1","bogus","10.0.0.1"],"e":5}"#).unwrap();
        assert_eq!(parsed.ips, vec![IpAddr::from(Ipv6Addr::LOCALHOST), "10.0.0.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn keys_and_ips() {
        assert!(parse_public_key("zz").is_err());
        assert!(parse_public_key(&"00".repeat(31)).is_err());
        let k = Keypair::generate();
        assert!(parse_public_key(&k.public_hex()).is_ok());
        assert_eq!(default_ips(Some(Ipv4Addr::LOCALHOST.into()))[0], IpAddr::from(Ipv4Addr::LOCALHOST));
        assert!(default_ips(None).iter().all(|ip| !ip.is_loopback()) || default_ips(None) == [IpAddr::from(Ipv4Addr::LOCALHOST)]);
        // On a host with IPv6 loopback, a Grape on ::1 gives ::1 first.
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            assert_eq!(default_ips(Some(Ipv6Addr::LOCALHOST.into()))[0], IpAddr::from(Ipv6Addr::LOCALHOST));
        }
    }
}
