//! Link against Node reference Grapes: the behaviours of grenache-nodejs-link's own test suite
//! (announce, cache, chaining, lookup, put-get) plus our fixes (typed Grape errors, empty lookups
//! not cached, coalescing, surfaced announce errors, recovery from a dead Grape, signed mutable put).

#![allow(clippy::unwrap_used)]

mod link_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grenache::ErrorKind;
use grenache::link::{Keypair, Link, LinkConfig, MutableItem};
use grenache_e2e::{NodeProcess, free_port, free_tcp_port};
use link_support::{Grapes, wait_lookup};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_announce_then_lookup_and_cache() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let h = link.start_announcing("test", 10000, Duration::from_secs(60));
    h.first_result(Duration::from_secs(10)).await.expect("first announce");
    // The other Grape finds it through the DHT.
    let other = g.link_to(1);
    let found = wait_lookup(&other, "test", 1).await;
    assert_eq!(found, vec!["127.0.0.1:10000".to_string()]);
    // cache.js: after lookups the result is in the cache.
    assert_eq!(other.lookup("test").await.unwrap(), vec!["127.0.0.1:10000".to_string()]);
    assert_eq!(other.cached_lookup("test").unwrap().to_vec(), vec!["127.0.0.1:10000".to_string()]);
    assert!(link.stop_announcing("test", 10000));
    assert!(!link.stop_announcing("test", 10000));
    assert!(h.is_stopped());
    // chaining.js: stop clears the cache and the Link stays usable.
    other.stop();
    assert!(other.cached_lookup("test").is_none());
    assert_eq!(other.lookup("test").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_put_get_immutable_and_miss() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let hash = link.put_value(&json!("hello world")).await.unwrap();
    assert_eq!(hash, "6d33adc2b6b2c14c3036feefb7fedbca1a880527");
    let item = link.get(&hash).await.unwrap().expect("item");
    assert_eq!(item["v"], "hello world");
    assert_eq!(link.get("0000000000000000000000000000000000000000").await.unwrap(), None);
    let e = link.put(&json!({"x": 1})).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_put_mutable_signed_in_library() {
    let g = Grapes::start(true).await;
    let link = g.link();
    let key = Keypair::generate();
    let mut item = MutableItem::new(json!("mutable v1"), 1);
    item.salt = Some("mysalt".into());
    let target = link.put_mutable(&key, &item).await.unwrap();
    assert_eq!(target, key.target_hex(Some("mysalt")));
    let got = link.get_salted(&target, "mysalt").await.unwrap().expect("mutable item");
    assert_eq!(got["v"], "mutable v1");
    assert_eq!(got["k"], key.public_hex());
    assert_eq!(got["seq"], 1);
    // The same seq again is refused with a typed error.
    let e = link.put_mutable(&key, &item).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SeqTooLow, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_grape_errors_are_typed_and_empty_lookups_not_cached() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let e = link.call("foo", &json!("bar"), None).await.unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Grape, "ERR_REQ_NOTFOUND"));
    let e = link.call("lookup", &json!(123), None).await.unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Grape, "ERR_GRAPE_LOOKUP"));
    let e = link.call("announce", &json!(["svc", "x"]), None).await.unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Grape, "ERR_GRAPE_SERVICE_PORT"));

    let e = link.lookup("svc_none").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LookupEmpty);
    assert!(link.cached_lookup("svc_none").is_none());
    link.announce("svc_none", 12345).await.unwrap();
    // Not cached: the very next lookup asks the Grape and finds the service.
    assert_eq!(link.lookup("svc_none").await.unwrap(), vec!["127.0.0.1:12345".to_string()]);
}

/// A fake Grape that counts requests and answers every one with `body` after `delay`.
async fn fake_grape(body: &'static str, delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    // One request per connection is enough here (we answer Connection: close).
                    let Ok(n) = s.read(&mut tmp).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", body.len(), body);
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn link_concurrent_lookups_are_coalesced() {
    let (port, count) = fake_grape(r#"["127.0.0.1:1"]"#, Duration::from_millis(300)).await;
    let link = Link::with_grape(format!("http://127.0.0.1:{port}")).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let l = link.clone();
        tasks.push(tokio::spawn(async move { l.lookup("svc").await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), vec!["127.0.0.1:1".to_string()]);
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // Cached now: no new call.
    link.lookup("svc").await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn link_calls_time_out() {
    let (port, _count) = fake_grape(r#"["127.0.0.1:1"]"#, Duration::from_secs(30)).await;
    let cfg = LinkConfig {
        request_timeout: Duration::from_millis(200),
        retries: 1,
        ..LinkConfig::with_grape(format!("http://127.0.0.1:{port}"))
    };
    let link = Link::new(cfg).unwrap();
    let t0 = std::time::Instant::now();
    let e = link.lookup("svc").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_dead_grape_gives_clear_error_and_recovers() {
    let (dht, api) = (free_port(), free_tcp_port());
    let link = Link::with_grape(format!("http://127.0.0.1:{api}")).unwrap();
    let e = link.lookup("svc").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    // Keep-announcing surfaces the failure instead of swallowing it.
    let h = link.start_announcing("svc_dead", 4242, Duration::from_millis(200));
    let e = h.first_result(Duration::from_secs(20)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect);
    assert!(h.last_error().is_some());
    assert!(h.status().failures >= 1);

    // The Grape comes (back): the same Link works and the announce loop recovers.
    // (A lone Grape cannot announce into the DHT: start a pair.)
    let (dht2, api2) = (free_port(), free_tcp_port());
    let mut procs = Vec::new();
    for (d, a, b) in [(dht, api, dht2), (dht2, api2, dht)] {
        let (d, a, b) = (d.to_string(), a.to_string(), format!("127.0.0.1:{b}"));
        let mut p = NodeProcess::spawn("grape.js", &["--dht-port", &d, "--api-port", &a, "--bootstrap", &b]);
        while p.json(Duration::from_secs(30)).await["event"] != "started" {}
        procs.push(p);
    }
    grenache_e2e::eventually(Duration::from_secs(30), "announce loop recovers", || async {
        (h.status().successes > 0 && h.last_error().is_none()).then_some(())
    })
    .await;
    let found = wait_lookup(&link, "svc_dead", 1).await;
    assert_eq!(found, vec!["127.0.0.1:4242".to_string()]);
    link.stop();
    assert!(h.is_stopped());
}
