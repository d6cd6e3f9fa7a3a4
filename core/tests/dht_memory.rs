//! The peer store holds 100 000 announced services in well under 64 MB.
//!
//! Measured with a counting global allocator (this test binary only; the library itself
//! forbids unsafe code). It is its own test binary so that no other test allocates meanwhile.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use grenache::dht::store::{AddPeer, PeerStore};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn hundred_thousand_services_fit_in_well_under_64_mb() {
    let before = LIVE.load(Ordering::Relaxed);
    let mut store = PeerStore::new(1_000_000, Duration::from_secs(120));
    let now = Instant::now();
    for i in 0..100_000u32 {
        // realistic service names, e.g. "rest:service:number:00042"
        let name = format!("rest:service:number:{i:05}");
        let peer = SocketAddrV4::new(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 1024 + (i % 50_000) as u16);
        assert_eq!(store.add(name.as_bytes(), SocketAddr::V4(peer), now), AddPeer::Added);
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(store.len(), 100_000);
    assert_eq!(store.keys(), 100_000);
    eprintln!("peer store: {} bytes for 100 000 services ({} bytes each)", used, used / 100_000);
    assert!(used < 32 * 1024 * 1024, "peer store uses {used} bytes for 100 000 services");
    assert_eq!(store.get(b"rest:service:number:00042", 10, now).len(), 1);
}
