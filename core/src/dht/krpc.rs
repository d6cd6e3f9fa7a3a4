//! KRPC messages: typed queries, responses and errors, and their bencode wire form.
//!
//! Two layers, like `mainline`: [`decode`] turns a datagram into a [`Message`] (or a
//! [`KrpcDecodeError`]: such datagrams are dropped), [`Message::encode`] produces the canonical
//! bytes. Semantic checks that the reference answers with a KRPC error (e.g. a `find_node` without
//! `target` gets error 203) are NOT decode errors: the field is an `Option` and the node decides.
//! A field of the wrong type (an integer `target`, a list `id`, a port that is not an integer) is a
//! decode error, so the whole datagram is dropped (the reference crashes on some of these, §4.5).
//!
//! Unknown keys are ignored (mainline's `v`, `ro`, `ip`...).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::bencode::{self, Value};

/// A decoded KRPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Transaction id (any length; we send 2 bytes).
    pub t: Vec<u8>,
    /// The payload.
    pub body: Body,
}

/// What a KRPC message carries (`y` = `q`, `r` or `e`).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A query (`y = q`).
    Query(Query),
    /// A response (`y = r`).
    Response(Response),
    /// An error (`y = e`).
    Error(KrpcError),
}

/// A query: the sender's id (`a.id`) and the method with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `a.id`, when present (any length is kept; only 20-byte ids are routable).
    pub id: Option<Vec<u8>>,
    /// Method and arguments.
    pub method: Method,
    /// BEP43 `ro = 1` (top-level key): the sender does not answer queries, so it is not added to
    /// routing tables. (bittorrent-dht ignores `ro`; honouring it keeps read-only clients such as
    /// `mainline` in client mode out of our tables.)
    pub read_only: bool,
    /// BEP 32 `a.want` (`find_node`, `get_peers`, `get`): the address families whose nodes the
    /// sender wants back. `None` (absent, or not a list) means the family of the socket the query
    /// came in on. bittorrent-dht ignores the key.
    pub want: Option<Want>,
}

/// The families a BEP 32 `want` list asks for (`"n4"`, `"n6"`; other entries are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    /// `"n4"`: IPv4 nodes, in `nodes`.
    pub n4: bool,
    /// `"n6"`: IPv6 nodes, in `nodes6`.
    pub n6: bool,
}

/// Query methods and their arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `ping`
    Ping,
    /// `find_node`
    FindNode {
        /// `a.target` (any length).
        target: Option<Vec<u8>>,
    },
    /// `get_peers`
    GetPeers {
        /// `a.info_hash` (any length: Grenache sends raw service names).
        info_hash: Option<Vec<u8>>,
    },
    /// `announce_peer`
    AnnouncePeer {
        /// `a.info_hash`.
        info_hash: Option<Vec<u8>>,
        /// `a.port` (range-checked by the node, not here).
        port: Option<i64>,
        /// `a.implied_port` non-zero.
        implied_port: bool,
        /// `a.token`.
        token: Option<Vec<u8>>,
    },
    /// `unannounce_peer` (ours; Node Grapes do not know it and drop it unanswered): removes the
    /// record `<source IP>:port` under `info_hash`. Same arguments and token rule as
    /// `announce_peer`, so only the address that announced a record can remove it.
    UnannouncePeer {
        /// `a.info_hash`.
        info_hash: Option<Vec<u8>>,
        /// `a.port`.
        port: Option<i64>,
        /// `a.implied_port` non-zero.
        implied_port: bool,
        /// `a.token`.
        token: Option<Vec<u8>>,
    },
    /// BEP44 `get`
    Get {
        /// `a.target`.
        target: Option<Vec<u8>>,
    },
    /// BEP44 `put`
    Put(PutArgs),
    /// Any other method name (never answered).
    Other(Vec<u8>),
}

/// Arguments of a BEP44 `put`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PutArgs {
    /// `a.token`.
    pub token: Option<Vec<u8>>,
    /// `a.v` (any bencode value).
    pub v: Option<Value>,
    /// `a.k` (public key, 32 bytes when valid).
    pub k: Option<Vec<u8>>,
    /// `a.sig` (64 bytes when valid).
    pub sig: Option<Vec<u8>>,
    /// `a.seq`.
    pub seq: Option<i64>,
    /// `a.salt` (present, possibly empty).
    pub salt: Option<Vec<u8>>,
    /// `a.cas`.
    pub cas: Option<i64>,
}

/// The `r` dict of a response. Every field is optional; unknown keys are dropped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response {
    /// `r.id`.
    pub id: Option<Vec<u8>>,
    /// `r.nodes`: raw compact node info (26 bytes per node); see [`decode_nodes`].
    pub nodes: Option<Vec<u8>>,
    /// `r.nodes6` (BEP 32): raw compact IPv6 node info (38 bytes per node); see [`decode_nodes6`].
    pub nodes6: Option<Vec<u8>>,
    /// `r.values`: list of compact peers (6 bytes each when valid).
    pub values: Option<Vec<Vec<u8>>>,
    /// `r.token`.
    pub token: Option<Vec<u8>>,
    /// `r.v` (BEP44 value).
    pub v: Option<Value>,
    /// `r.k`.
    pub k: Option<Vec<u8>>,
    /// `r.sig`.
    pub sig: Option<Vec<u8>>,
    /// `r.seq`.
    pub seq: Option<i64>,
    /// `r.gone` (ours, in `get_peers` replies of our nodes): compact peers of this info-hash that
    /// their announcer removed with `unannounce_peer` lately. Node Grapes ignore the key.
    pub gone: Option<Vec<Vec<u8>>>,
    /// `r.ip` (ours, in `unannounce_peer` replies): the requester's address as the answering node
    /// saw it (6-byte compact), i.e. the record that was removed, so the requester can forget it
    /// too.
    pub ip: Option<Vec<u8>>,
}

/// A KRPC error `e: [code, message]`.
#[derive(Debug, Clone, PartialEq)]
pub struct KrpcError {
    /// Error code (201 generic, 202 server, 203 protocol, 204 method unknown, 205 too large,
    /// 301 CAS mismatch, 302 seq too low...).
    pub code: i64,
    /// Error text (bytes on the wire; UTF-8 in practice).
    pub message: Vec<u8>,
}

impl KrpcError {
    /// A new error.
    pub fn new(code: i64, message: &str) -> KrpcError {
        KrpcError { code, message: message.as_bytes().to_vec() }
    }
}

/// Why a datagram was not a usable KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KrpcDecodeError {
    /// Not valid bencode.
    Bencode(bencode::DecodeError),
    /// Valid bencode with the wrong shape (missing `t`/`y`/`q`/`a`, a field of the wrong type...).
    Shape(&'static str),
}

impl std::fmt::Display for KrpcDecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KrpcDecodeError::Bencode(e) => write!(f, "{e}"),
            KrpcDecodeError::Shape(s) => write!(f, "krpc: {s}"),
        }
    }
}

impl std::error::Error for KrpcDecodeError {}

type Dict = BTreeMap<Vec<u8>, Value>;

fn opt_bytes(d: &Dict, key: &'static str) -> Result<Option<Vec<u8>>, KrpcDecodeError> {
    match d.get(key.as_bytes()) {
        None => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b.clone())),
        Some(_) => Err(KrpcDecodeError::Shape(key)),
    }
}

fn opt_int(d: &Dict, key: &'static str) -> Result<Option<i64>, KrpcDecodeError> {
    match d.get(key.as_bytes()) {
        None => Ok(None),
        Some(Value::Int(i)) => Ok(Some(*i)),
        Some(_) => Err(KrpcDecodeError::Shape(key)),
    }
}

/// Decodes one datagram. Never panics; every malformed input is an `Err`.
pub fn decode(datagram: &[u8]) -> Result<Message, KrpcDecodeError> {
    let v = bencode::decode(datagram).map_err(KrpcDecodeError::Bencode)?;
    let top = v.as_dict().ok_or(KrpcDecodeError::Shape("not a dict"))?;
    let t = opt_bytes(top, "t")?.ok_or(KrpcDecodeError::Shape("missing t"))?;
    let y = opt_bytes(top, "y")?.ok_or(KrpcDecodeError::Shape("missing y"))?;
    let body = match y.as_slice() {
        b"q" => Body::Query(decode_query(top)?),
        b"r" => {
            let r = match top.get(&b"r"[..]) {
                Some(Value::Dict(r)) => r,
                _ => return Err(KrpcDecodeError::Shape("missing r")),
            };
            Body::Response(decode_response(r)?)
        }
        b"e" => {
            let e = top.get(&b"e"[..]).and_then(Value::as_list).ok_or(KrpcDecodeError::Shape("missing e"))?;
            let code = e.first().and_then(Value::as_int).ok_or(KrpcDecodeError::Shape("e code"))?;
            let message = match e.get(1) {
                Some(Value::Bytes(b)) => b.clone(),
                None => Vec::new(),
                Some(_) => return Err(KrpcDecodeError::Shape("e message")),
            };
            Body::Error(KrpcError { code, message })
        }
        _ => return Err(KrpcDecodeError::Shape("unknown y")),
    };
    Ok(Message { t, body })
}

fn decode_query(top: &Dict) -> Result<Query, KrpcDecodeError> {
    let q = opt_bytes(top, "q")?.ok_or(KrpcDecodeError::Shape("missing q"))?;
    let a = match top.get(&b"a"[..]) {
        Some(Value::Dict(a)) => a,
        _ => return Err(KrpcDecodeError::Shape("missing a")),
    };
    let id = opt_bytes(a, "id")?;
    let read_only = matches!(top.get(&b"ro"[..]), Some(Value::Int(i)) if *i != 0);
    let want = match a.get(&b"want"[..]) {
        Some(Value::List(l)) => Some(Want {
            n4: l.iter().any(|w| matches!(w, Value::Bytes(b) if b == b"n4")),
            n6: l.iter().any(|w| matches!(w, Value::Bytes(b) if b == b"n6")),
        }),
        _ => None,
    };
    let method = match q.as_slice() {
        b"ping" => Method::Ping,
        b"find_node" => Method::FindNode { target: opt_bytes(a, "target")? },
        b"get_peers" => Method::GetPeers { info_hash: opt_bytes(a, "info_hash")? },
        b"announce_peer" => Method::AnnouncePeer {
            info_hash: opt_bytes(a, "info_hash")?,
            port: opt_int(a, "port")?,
            implied_port: opt_int(a, "implied_port")?.unwrap_or(0) != 0,
            token: opt_bytes(a, "token")?,
        },
        b"unannounce_peer" => Method::UnannouncePeer {
            info_hash: opt_bytes(a, "info_hash")?,
            port: opt_int(a, "port")?,
            implied_port: opt_int(a, "implied_port")?.unwrap_or(0) != 0,
            token: opt_bytes(a, "token")?,
        },
        b"get" => Method::Get { target: opt_bytes(a, "target")? },
        b"put" => Method::Put(PutArgs {
            token: opt_bytes(a, "token")?,
            v: a.get(&b"v"[..]).cloned(),
            k: opt_bytes(a, "k")?,
            sig: opt_bytes(a, "sig")?,
            seq: opt_int(a, "seq")?,
            salt: opt_bytes(a, "salt")?,
            cas: opt_int(a, "cas")?,
        }),
        _ => Method::Other(q),
    };
    Ok(Query { id, method, read_only, want })
}

fn opt_byte_list(r: &Dict, key: &'static str) -> Result<Option<Vec<Vec<u8>>>, KrpcDecodeError> {
    match r.get(key.as_bytes()) {
        None => Ok(None),
        Some(Value::List(l)) => {
            let mut out = Vec::with_capacity(l.len());
            for x in l {
                match x {
                    Value::Bytes(b) => out.push(b.clone()),
                    _ => return Err(KrpcDecodeError::Shape(key)),
                }
            }
            Ok(Some(out))
        }
        Some(_) => Err(KrpcDecodeError::Shape(key)),
    }
}

fn decode_response(r: &Dict) -> Result<Response, KrpcDecodeError> {
    let values = opt_byte_list(r, "values")?;
    Ok(Response {
        id: opt_bytes(r, "id")?,
        nodes: opt_bytes(r, "nodes")?,
        nodes6: opt_bytes(r, "nodes6")?,
        values,
        token: opt_bytes(r, "token")?,
        v: r.get(&b"v"[..]).cloned(),
        k: opt_bytes(r, "k")?,
        sig: opt_bytes(r, "sig")?,
        seq: opt_int(r, "seq")?,
        gone: opt_byte_list(r, "gone")?,
        ip: opt_bytes(r, "ip")?,
    })
}

fn put_bytes(d: &mut Dict, key: &str, v: &Option<Vec<u8>>) {
    if let Some(v) = v {
        d.insert(key.as_bytes().to_vec(), Value::Bytes(v.clone()));
    }
}

fn put_int(d: &mut Dict, key: &str, v: Option<i64>) {
    if let Some(v) = v {
        d.insert(key.as_bytes().to_vec(), Value::Int(v));
    }
}

impl Message {
    /// The bencode value of this message (keys sorted on encoding).
    pub fn to_value(&self) -> Value {
        let mut top = Dict::new();
        top.insert(b"t".to_vec(), Value::Bytes(self.t.clone()));
        match &self.body {
            Body::Query(q) => {
                top.insert(b"y".to_vec(), Value::Bytes(b"q".to_vec()));
                let mut a = Dict::new();
                put_bytes(&mut a, "id", &q.id);
                let name: &[u8] = match &q.method {
                    Method::Ping => b"ping",
                    Method::FindNode { target } => {
                        put_bytes(&mut a, "target", target);
                        b"find_node"
                    }
                    Method::GetPeers { info_hash } => {
                        put_bytes(&mut a, "info_hash", info_hash);
                        b"get_peers"
                    }
                    Method::AnnouncePeer { info_hash, port, implied_port, token } => {
                        put_bytes(&mut a, "info_hash", info_hash);
                        put_int(&mut a, "port", *port);
                        put_int(&mut a, "implied_port", Some(i64::from(*implied_port)));
                        put_bytes(&mut a, "token", token);
                        b"announce_peer"
                    }
                    Method::UnannouncePeer { info_hash, port, implied_port, token } => {
                        put_bytes(&mut a, "info_hash", info_hash);
                        put_int(&mut a, "port", *port);
                        put_int(&mut a, "implied_port", Some(i64::from(*implied_port)));
                        put_bytes(&mut a, "token", token);
                        b"unannounce_peer"
                    }
                    Method::Get { target } => {
                        put_bytes(&mut a, "target", target);
                        b"get"
                    }
                    Method::Put(p) => {
                        put_bytes(&mut a, "token", &p.token);
                        if let Some(v) = &p.v {
                            a.insert(b"v".to_vec(), v.clone());
                        }
                        put_bytes(&mut a, "k", &p.k);
                        put_bytes(&mut a, "sig", &p.sig);
                        put_int(&mut a, "seq", p.seq);
                        put_bytes(&mut a, "salt", &p.salt);
                        put_int(&mut a, "cas", p.cas);
                        b"put"
                    }
                    Method::Other(name) => name,
                };
                if let Some(w) = q.want {
                    let mut l = Vec::new();
                    if w.n4 {
                        l.push(Value::Bytes(b"n4".to_vec()));
                    }
                    if w.n6 {
                        l.push(Value::Bytes(b"n6".to_vec()));
                    }
                    a.insert(b"want".to_vec(), Value::List(l));
                }
                top.insert(b"q".to_vec(), Value::Bytes(name.to_vec()));
                if q.read_only {
                    top.insert(b"ro".to_vec(), Value::Int(1));
                }
                top.insert(b"a".to_vec(), Value::Dict(a));
            }
            Body::Response(r) => {
                top.insert(b"y".to_vec(), Value::Bytes(b"r".to_vec()));
                let mut d = Dict::new();
                put_bytes(&mut d, "id", &r.id);
                put_bytes(&mut d, "nodes", &r.nodes);
                put_bytes(&mut d, "nodes6", &r.nodes6);
                if let Some(values) = &r.values {
                    d.insert(b"values".to_vec(), Value::List(values.iter().map(|v| Value::Bytes(v.clone())).collect()));
                }
                put_bytes(&mut d, "token", &r.token);
                if let Some(v) = &r.v {
                    d.insert(b"v".to_vec(), v.clone());
                }
                put_bytes(&mut d, "k", &r.k);
                put_bytes(&mut d, "sig", &r.sig);
                put_int(&mut d, "seq", r.seq);
                if let Some(gone) = &r.gone {
                    d.insert(b"gone".to_vec(), Value::List(gone.iter().map(|v| Value::Bytes(v.clone())).collect()));
                }
                put_bytes(&mut d, "ip", &r.ip);
                top.insert(b"r".to_vec(), Value::Dict(d));
            }
            Body::Error(e) => {
                top.insert(b"y".to_vec(), Value::Bytes(b"e".to_vec()));
                top.insert(b"e".to_vec(), Value::List(vec![Value::Int(e.code), Value::Bytes(e.message.clone())]));
            }
        }
        Value::Dict(top)
    }

    /// The canonical wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.to_value().encode()
    }
}

/// A node from a compact `nodes` (IPv4) or `nodes6` (IPv6, BEP 32) list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// 20-byte node id.
    pub id: [u8; 20],
    /// Address and port (IPv4 in `nodes`, IPv6 in `nodes6`).
    pub addr: SocketAddr,
}

/// Length of a compact IPv4 node entry (`nodes`).
pub const NODE_LEN: usize = 26;
/// Length of a compact IPv6 node entry (`nodes6`, BEP 32).
pub const NODE6_LEN: usize = 38;

/// Encodes the IPv4 nodes of `nodes` as 26-byte compact entries (the `nodes` key); IPv6 nodes
/// are left out.
pub fn encode_nodes(nodes: &[NodeInfo]) -> Vec<u8> {
    encode_family(nodes, false)
}

/// Encodes the IPv6 nodes of `nodes` as 38-byte compact entries (the `nodes6` key of BEP 32);
/// IPv4 nodes are left out.
pub fn encode_nodes6(nodes: &[NodeInfo]) -> Vec<u8> {
    encode_family(nodes, true)
}

fn encode_family(nodes: &[NodeInfo], v6: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * if v6 { NODE6_LEN } else { NODE_LEN });
    for n in nodes.iter().filter(|n| n.addr.is_ipv6() == v6) {
        out.extend_from_slice(&n.id);
        out.extend_from_slice(&encode_peer(n.addr));
    }
    out
}

/// Decodes a `nodes` value: 26-byte IPv4 entries. A value whose length is not a multiple of 26
/// (e.g. IPv6 entries where IPv4 ones belong) is dropped whole; entries with port 0 are skipped.
pub fn decode_nodes(buf: &[u8]) -> Vec<NodeInfo> {
    decode_family(buf, NODE_LEN)
}

/// Decodes a `nodes6` value: 38-byte IPv6 entries (BEP 32). A value whose length is not a
/// multiple of 38 is dropped whole; entries with port 0 are skipped.
pub fn decode_nodes6(buf: &[u8]) -> Vec<NodeInfo> {
    decode_family(buf, NODE6_LEN)
}

fn decode_family(buf: &[u8], len: usize) -> Vec<NodeInfo> {
    if !buf.len().is_multiple_of(len) {
        return Vec::new();
    }
    buf.chunks_exact(len)
        .filter_map(|c| {
            let mut id = [0u8; 20];
            id.copy_from_slice(&c[..20]);
            let addr = decode_peer(&c[20..])?;
            Some(NodeInfo { id, addr })
        })
        .collect()
}

/// Compact peer: 6 bytes for IPv4 (BEP 5), 18 for IPv6 (BEP 32). An IPv4-mapped IPv6 address
/// is written as the IPv4 address it maps.
pub fn encode_peer(addr: SocketAddr) -> Vec<u8> {
    let mut out = match canonical(addr) {
        SocketAddr::V4(a) => a.ip().octets().to_vec(),
        SocketAddr::V6(a) => a.ip().octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// Decodes a compact peer of 6 (IPv4) or 18 (IPv6) bytes; `None` for any other length or port 0.
pub fn decode_peer(b: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match b.len() {
        6 => (IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), [b[4], b[5]]),
        18 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            (IpAddr::V6(Ipv6Addr::from(o)), [b[16], b[17]])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(port);
    if port == 0 {
        return None;
    }
    Some(canonical(SocketAddr::new(ip, port)))
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) turned into the IPv4 address.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(IpAddr::V4(ip), a.port()),
            None => addr,
        },
        a => a,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &[u8; 20] = b"abcdefghij0123456789";

    fn q(t: &[u8], method: Method) -> Message {
        Message { t: t.to_vec(), body: Body::Query(Query { id: Some(ID.to_vec()), method, read_only: false, want: None }) }
    }

    /// The captured grape queries of spec §4.2, byte for byte.
    #[test]
    fn encodes_captured_queries() {
        let m = q(b"\x00\x01", Method::FindNode { target: Some(ID.to_vec()) });
        assert_eq!(m.encode(), b"d1:ad2:id20:abcdefghij01234567896:target20:abcdefghij0123456789e1:q9:find_node1:t2:\x00\x011:y1:qe");
        let m = q(b"\x00\x02", Method::GetPeers { info_hash: Some(b"svc:x".to_vec()) });
        assert_eq!(m.encode(), b"d1:ad2:id20:abcdefghij01234567899:info_hash5:svc:xe1:q9:get_peers1:t2:\x00\x021:y1:qe");
        let m = q(
            b"\x00\x03",
            Method::AnnouncePeer {
                info_hash: Some(b"svc:x".to_vec()),
                port: Some(7000),
                implied_port: false,
                token: Some(b"tok1".to_vec()),
            },
        );
        assert_eq!(
            m.encode(),
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti0e9:info_hash5:svc:x4:porti7000e5:token4:tok1e1:q13:announce_peer1:t2:\x00\x031:y1:qe"
        );
        let m = q(b"\x00\x05", Method::Get { target: Some(ID.to_vec()) });
        assert_eq!(m.encode(), b"d1:ad2:id20:abcdefghij01234567896:target20:abcdefghij0123456789e1:q3:get1:t2:\x00\x051:y1:qe");
        let m = q(
            b"\x00\x06",
            Method::Put(PutArgs { token: Some(b"tok1".to_vec()), v: Some(Value::Bytes(b"hello world".to_vec())), ..Default::default() }),
        );
        assert_eq!(m.encode(), b"d1:ad2:id20:abcdefghij01234567895:token4:tok11:v11:hello worlde1:q3:put1:t2:\x00\x061:y1:qe");
        let pk = [7u8; 32];
        let sig = [9u8; 64];
        let m = q(
            b"\x00\x09",
            Method::Put(PutArgs {
                token: Some(b"tok1".to_vec()),
                v: Some(Value::Bytes(b"mutable hello".to_vec())),
                k: Some(pk.to_vec()),
                sig: Some(sig.to_vec()),
                seq: Some(1),
                salt: Some(b"salty".to_vec()),
                cas: Some(0),
            }),
        );
        let mut want = b"d1:ad3:casi0e2:id20:abcdefghij01234567891:k32:".to_vec();
        want.extend_from_slice(&pk);
        want.extend_from_slice(b"4:salt5:salty3:seqi1e3:sig64:");
        want.extend_from_slice(&sig);
        want.extend_from_slice(b"5:token4:tok11:v13:mutable helloe1:q3:put1:t2:\x00\x091:y1:qe");
        assert_eq!(m.encode(), want);
        let m = q(b"..", Method::Ping);
        assert_eq!(m.encode(), b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:..1:y1:qe");
        // and they decode back to the same message
        for bytes in [&b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:..1:y1:qe"[..], &want] {
            assert_eq!(decode(bytes).unwrap().encode(), bytes);
        }
    }

    /// The captured grape replies of spec §4.3.
    #[test]
    fn encodes_and_decodes_captured_replies() {
        let ping = b"d1:rd2:id20:abcdefghij0123456789e1:t2:ta1:y1:re";
        let m = decode(ping).unwrap();
        assert_eq!(m.t, b"ta");
        assert_eq!(m.body, Body::Response(Response { id: Some(ID.to_vec()), ..Default::default() }));
        assert_eq!(m.encode(), ping);

        let err = b"d1:eli203e45:`find_node` missing required `a.target` fielde1:t2:ta1:y1:ee";
        let m = decode(err).unwrap();
        assert_eq!(m.body, Body::Error(KrpcError::new(203, "`find_node` missing required `a.target` field")));
        assert_eq!(m.encode(), err);

        let tok = [5u8; 20];
        let mut gp = b"d1:rd2:id20:abcdefghij01234567895:token20:".to_vec();
        gp.extend_from_slice(&tok);
        gp.extend_from_slice(b"6:valuesl6:\x7f\x00\x00\x01\x05\x39ee1:t2:ta1:y1:re");
        let m = decode(&gp).unwrap();
        let Body::Response(r) = &m.body else { panic!("not a response") };
        assert_eq!(r.token.as_deref(), Some(&tok[..]));
        let peers: Vec<_> = r.values.as_ref().unwrap().iter().filter_map(|v| decode_peer(v)).collect();
        assert_eq!(peers, vec!["127.0.0.1:1337".parse::<SocketAddr>().unwrap()]);
        assert_eq!(m.encode(), gp);

        let nodes = encode_nodes(&[
            NodeInfo { id: [1; 20], addr: "127.0.0.1:20001".parse().unwrap() },
            NodeInfo { id: [2; 20], addr: "10.0.0.2:80".parse().unwrap() },
        ]);
        assert_eq!(nodes.len(), 52);
        let r = Response { id: Some(ID.to_vec()), nodes: Some(nodes.clone()), ..Default::default() };
        let m = Message { t: b"ta".to_vec(), body: Body::Response(r) };
        let mut want = b"d1:rd2:id20:abcdefghij01234567895:nodes52:".to_vec();
        want.extend_from_slice(&nodes);
        want.extend_from_slice(b"e1:t2:ta1:y1:re");
        assert_eq!(m.encode(), want);
        assert_eq!(decode_nodes(&nodes).len(), 2);

        let get = b"d1:rd2:id20:abcdefghij01234567895:token4:tok11:v11:hello worlde1:t2:ta1:y1:re";
        let m = decode(get).unwrap();
        let Body::Response(r) = &m.body else { panic!("not a response") };
        assert_eq!(r.v, Some(Value::Bytes(b"hello world".to_vec())));
        assert_eq!(m.encode(), get);

        let e400 = b"d1:eli400e26:verification not supportede1:t2:ta1:y1:ee";
        assert_eq!(decode(e400).unwrap().body, Body::Error(KrpcError::new(400, "verification not supported")));
    }

    #[test]
    fn crash_inputs_are_decode_errors_not_panics() {
        // §4.5: no q key
        assert!(decode(b"d1:t2:aa1:y1:qe").is_err());
        // find_node with an integer target
        assert!(decode(b"d1:ad2:id20:abcdefghij01234567896:targeti1ee1:q9:find_node1:t2:aa1:y1:qe").is_err());
        assert!(decode(b"d1:ad2:id20:abcdefghij01234567899:info_hashi1ee1:q9:get_peers1:t2:aa1:y1:qe").is_err());
        // but missing target is a valid query (the node answers 203)
        let m = decode(b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe").unwrap();
        assert!(matches!(m.body, Body::Query(Query { method: Method::FindNode { target: None }, .. })));
        // a query with no `a` is dropped
        assert!(decode(b"d1:q4:ping1:t2:aa1:y1:qe").is_err());
        // any-length t
        let m = decode(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t5:hello1:y1:qe").unwrap();
        assert_eq!(m.t, b"hello");
        // extra keys (mainline's v, ro) are ignored
        let m = decode(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping2:roi1e1:t4:abcd1:v4:RS011:y1:qe").unwrap();
        assert_eq!(m.t, b"abcd");
        assert!(matches!(m.body, Body::Query(Query { read_only: true, .. })));
    }

    /// BEP 32: `want` on queries, `nodes6` (38-byte entries) and 18-byte peers in replies; a
    /// `nodes`/`nodes6` value of the wrong length is dropped whole, never misread.
    #[test]
    fn bep32_want_nodes6_and_ipv6_peers() {
        let mut m = q(b"\x00\x07", Method::FindNode { target: Some(ID.to_vec()) });
        if let Body::Query(q) = &mut m.body {
            q.want = Some(Want { n4: true, n6: true });
        }
        let enc = m.encode();
        assert_eq!(
            enc,
            b"d1:ad2:id20:abcdefghij01234567896:target20:abcdefghij01234567894:wantl2:n42:n6ee1:q9:find_node1:t2:\x00\x071:y1:qe"
        );
        assert_eq!(decode(&enc).unwrap(), m);
        // Unknown families are ignored; a `want` that is not a list is as if absent.
        let m = decode(b"d1:ad2:id20:abcdefghij01234567894:wantl2:n62:n9i4eee1:q4:ping1:t2:aa1:y1:qe").unwrap();
        assert!(matches!(m.body, Body::Query(Query { want: Some(Want { n4: false, n6: true }), .. })));
        let m = decode(b"d1:ad2:id20:abcdefghij01234567894:want2:n6e1:q4:ping1:t2:aa1:y1:qe").unwrap();
        assert!(matches!(m.body, Body::Query(Query { want: None, .. })));

        let v6: SocketAddr = "[2001:db8::1]:20001".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:20001".parse().unwrap();
        let nodes = [NodeInfo { id: [1; 20], addr: v4 }, NodeInfo { id: [2; 20], addr: v6 }];
        let n4 = encode_nodes(&nodes);
        let n6 = encode_nodes6(&nodes);
        assert_eq!((n4.len(), n6.len()), (NODE_LEN, NODE6_LEN));
        assert_eq!(decode_nodes(&n4), vec![nodes[0]]);
        assert_eq!(decode_nodes6(&n6), vec![nodes[1]]);
        // IPv6 entries where IPv4 ones belong (and the reverse), or a torn entry: dropped whole.
        let thirteen_v6: Vec<u8> = n6.iter().copied().cycle().take(13 * NODE6_LEN).collect();
        assert_eq!(thirteen_v6.len() % NODE_LEN, 0, "19 entries of 26 bytes by length");
        assert!(decode_nodes(&n6).is_empty());
        assert!(decode_nodes(&thirteen_v6[..13 * NODE6_LEN - 1]).is_empty());
        assert!(decode_nodes6(&n4).is_empty());
        assert!(decode_nodes6(&[n6.clone(), vec![0; 5]].concat()).is_empty());
        assert_eq!(decode_nodes6(&[n6.clone(), n6.clone()].concat()).len(), 2);
        // Peers: 6 or 18 bytes; mapped addresses are written as IPv4.
        assert_eq!(encode_peer(v6).len(), 18);
        assert_eq!(decode_peer(&encode_peer(v6)), Some(v6));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(encode_peer(mapped), encode_peer("10.0.0.1:80".parse().unwrap()));
        for len in [0, 5, 7, 17, 19, 26] {
            assert_eq!(decode_peer(&vec![1; len]), None, "{len} bytes");
        }
        let r = Response { id: Some(ID.to_vec()), nodes6: Some(n6.clone()), values: Some(vec![encode_peer(v6)]), ..Default::default() };
        let m = Message { t: b"tb".to_vec(), body: Body::Response(r) };
        assert_eq!(decode(&m.encode()).unwrap(), m);
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn arb_v() -> impl Strategy<Value = Value> {
        prop_oneof![any::<i64>().prop_map(Value::Int), bytes(40).prop_map(Value::Bytes)]
    }

    fn arb_method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::Ping),
            proptest::option::of(bytes(30)).prop_map(|target| Method::FindNode { target }),
            proptest::option::of(bytes(30)).prop_map(|info_hash| Method::GetPeers { info_hash }),
            (proptest::option::of(bytes(30)), proptest::option::of(any::<i64>()), any::<bool>(), proptest::option::of(bytes(24)))
                .prop_map(|(info_hash, port, implied_port, token)| Method::AnnouncePeer { info_hash, port, implied_port, token }),
            proptest::option::of(bytes(30)).prop_map(|target| Method::Get { target }),
            (proptest::option::of(bytes(30)), proptest::option::of(any::<i64>()), any::<bool>(), proptest::option::of(bytes(24)))
                .prop_map(|(info_hash, port, implied_port, token)| Method::UnannouncePeer { info_hash, port, implied_port, token }),
            (
                proptest::option::of(bytes(24)),
                proptest::option::of(arb_v()),
                proptest::option::of(bytes(32)),
                proptest::option::of(bytes(64)),
                proptest::option::of(any::<i64>()),
                proptest::option::of(bytes(10)),
                proptest::option::of(any::<i64>()),
            )
                .prop_map(|(token, v, k, sig, seq, salt, cas)| Method::Put(PutArgs { token, v, k, sig, seq, salt, cas })),
            "[a-z_]{0,12}"
                .prop_filter("not a known method", |s| {
                    !["ping", "find_node", "get_peers", "announce_peer", "unannounce_peer", "get", "put"].contains(&s.as_str())
                })
                .prop_map(|s| Method::Other(s.into_bytes())),
        ]
    }

    fn arb_body() -> impl Strategy<Value = Body> {
        prop_oneof![
            (proptest::option::of(bytes(24)), arb_method(), any::<bool>(), proptest::option::of((any::<bool>(), any::<bool>()))).prop_map(
                |(id, method, read_only, want)| Body::Query(Query { id, method, read_only, want: want.map(|(n4, n6)| Want { n4, n6 }) })
            ),
            (
                proptest::option::of(bytes(24)),
                proptest::option::of(bytes(60)),
                proptest::option::of(proptest::collection::vec(bytes(8), 0..4)),
                proptest::option::of(bytes(24)),
                proptest::option::of(arb_v()),
                proptest::option::of(bytes(32)),
                proptest::option::of(bytes(64)),
                proptest::option::of(any::<i64>()),
                proptest::option::of(proptest::collection::vec(bytes(8), 0..3)),
                proptest::option::of(bytes(6)),
                proptest::option::of(bytes(76)),
            )
                .prop_map(|(id, nodes, values, token, v, k, sig, seq, gone, ip, nodes6)| Body::Response(Response {
                    id,
                    nodes,
                    nodes6,
                    values,
                    token,
                    v,
                    k,
                    sig,
                    seq,
                    gone,
                    ip,
                })),
            (any::<i64>(), bytes(40)).prop_map(|(code, message)| Body::Error(KrpcError { code, message })),
        ]
    }

    proptest! {
        #[test]
        fn krpc_round_trip(t in bytes(8), body in arb_body()) {
            let m = Message { t, body };
            let enc = m.encode();
            let back = decode(&enc).unwrap();
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(back.encode(), enc);
        }

        #[test]
        fn krpc_decode_never_panics(data in bytes(200)) {
            let _ = decode(&data);
        }
    }
}
