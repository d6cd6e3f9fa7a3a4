//! Shared helpers for the Link/HTTP end-to-end tests: a pair of Node reference Grapes.
#![allow(dead_code)]

use std::time::Duration;

use grenache::link::{Link, LinkConfig};
use grenache_e2e::{NodeProcess, free_port};

/// Two Node reference Grapes bootstrapped to each other; killed on drop.
pub struct Grapes {
    /// The Grape processes.
    pub procs: Vec<NodeProcess>,
    /// Their HTTP API URLs.
    pub urls: Vec<String>,
}

impl Grapes {
    /// Starts two Grapes (`verify` gives them an ed25519 verifier for mutable items).
    pub async fn start(verify: bool) -> Grapes {
        let (d1, d2, a1, a2) = (free_port(), free_port(), free_port(), free_port());
        let mut procs = Vec::new();
        let mut urls = Vec::new();
        for (dht, api, boot) in [(d1, a1, d2), (d2, a2, d1)] {
            let (dht, api, boot) = (dht.to_string(), api.to_string(), format!("127.0.0.1:{boot}"));
            let mut args = vec!["--dht-port", &dht, "--api-port", &api, "--bootstrap", &boot];
            if verify {
                args.push("--verify");
            }
            let mut p = NodeProcess::spawn("grape.js", &args);
            loop {
                let v = p.json(Duration::from_secs(30)).await;
                if v["event"] == "started" {
                    break;
                }
                assert_ne!(v["event"], "error", "grape failed: {v}");
            }
            procs.push(p);
            urls.push(format!("http://127.0.0.1:{api}"));
        }
        Grapes { procs, urls }
    }

    /// A Link to the first Grape.
    pub fn link(&self) -> Link {
        Link::new(LinkConfig::with_grape(self.urls[0].clone())).expect("link")
    }

    /// A Link to the Grape `i`.
    pub fn link_to(&self, i: usize) -> Link {
        Link::new(LinkConfig::with_grape(self.urls[i].clone())).expect("link")
    }
}

/// Polls `link.lookup(name)` until it returns exactly `want` addresses (in any order).
pub async fn wait_lookup(link: &Link, name: &str, want: usize) -> Vec<String> {
    grenache_e2e::eventually(Duration::from_secs(30), &format!("{want} peers for {name}"), || async {
        link.invalidate(name);
        match link.lookup(name).await {
            Ok(v) if v.len() >= want => Some(v),
            _ => None,
        }
    })
    .await
}
