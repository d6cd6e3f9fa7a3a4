//! Gives the memory freed after a burst back to the system.
//!
//! glibc's allocator keeps freed memory in its heaps for reuse, and tokio's worker threads each
//! allocate from an arena of their own; after a burst (many large request bodies at once) the
//! process keeps its peak resident size although the memory is free. `malloc_trim(0)` hands the
//! free pages of every arena back (`madvise`), so a thread calls it every 5 s. On an idle heap
//! a call takes microseconds. Set `GRENACHE_MALLOC_TRIM=0` to turn it off. Other allocators
//! (and other C libraries) are left alone.

/// Starts the trimming thread (glibc on Linux only).
pub fn start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GRENACHE_MALLOC_TRIM").is_ok_and(|v| v == "0") {
            return;
        }
        let _ = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                // SAFETY: malloc_trim has no preconditions; it only walks glibc's own arenas.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
    }
}
