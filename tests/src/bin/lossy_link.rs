//! A point-to-point IP link between two network namespaces with delay and loss, for the NAT
//! tests on kernels without `sch_netem`: a TUN device in each namespace, and this process
//! copying IP packets between them, each one held `DELAY_MS` and dropped with probability
//! `LOSS_PERCENT`/100. Usage (as root):
//!
//! `lossy_link NS_A DEV_A NS_B DEV_B DELAY_MS LOSS_PERCENT`
//!
//! Prints `ready` once both devices exist (the caller then gives them addresses and brings them
//! up with `ip`), and runs until killed or until stdin closes.

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    grenache_e2e::lossy::run(&a);
}
