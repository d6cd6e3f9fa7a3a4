//! `grape`: run a Grape (DHT node + HTTP API).
fn main() {}
