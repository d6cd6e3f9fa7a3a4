//! `grenache`: the command-line client.
fn main() {}
