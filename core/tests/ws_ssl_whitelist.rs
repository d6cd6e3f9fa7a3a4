//! The `ws_ssl_whitelist` example as a test: `ping` allowed for one certificate fingerprint,
//! `deleteHarddisk` refused, an unlisted certificate refused at the upgrade (HTTP 401).

use grenache_test_certs as tls_certs;

#[allow(dead_code)]
#[path = "../examples/ws_ssl_whitelist.rs"]
mod example;

use serde_json::json;

#[tokio::test]
async fn ws_ssl_whitelist_example() {
    let o = example::run(None, false).await.expect("demo runs");
    assert_eq!(o.ping, Ok(json!("pong")));
    assert_eq!(o.delete, Err("ERR_FORBIDDEN".to_string()));
    let stranger = o.stranger.expect_err("unlisted certificate refused");
    assert!(stranger.contains("ERR_CLIENT_REFUSED"), "{stranger}");
}
