//! A bounded busy-poll before Node's loop goes to sleep, for the sockets driven on it
//! (`inloop.rs`): `GRENACHE_NODE_POLL_US` microseconds (default 0: off).
//!
//! The why and the policy are the core's ([`grenache::transport::loop_spin`]): spin only when
//! bytes went out on one of those sockets since the last spin that found nothing, never when the
//! loop has work pending and no longer than its next timer, and rest after fruitless spins.
//! Here the spin runs in a `uv_prepare_t`, which libuv calls just before it computes how long
//! to block, and it looks only at the sockets of `inloop.rs` (a private epoll set of them: one
//! `epoll_wait` per look, whatever their number).
//!
//! Off by default: on the 2-core test machine it tripled sequential WS round trips between two
//! processes when waking a sleeping thread was slow, and cost up to a quarter when it was fast
//! (docs/benchmarks.md, 2026-12-05).

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::ptr;
use std::time::Duration;

use grenache::transport::loop_spin::{self, LoopSpin};

use napi::sys;

const UV_PREPARE: c_int = 9;
type PrepareCb = unsafe extern "C" fn(handle: *mut c_void);
type CloseCb = unsafe extern "C" fn(handle: *mut c_void);
unsafe extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_prepare_init(lp: *mut sys::uv_loop_s, handle: *mut c_void) -> c_int;
    fn uv_prepare_start(handle: *mut c_void, cb: PrepareCb) -> c_int;
    fn uv_unref(handle: *mut c_void);
    fn uv_close(handle: *mut c_void, cb: CloseCb);
    fn uv_backend_timeout(lp: *const sys::uv_loop_s) -> c_int;
}

/// The spin of this thread's loop.
struct Spinner {
    lp: *mut sys::uv_loop_s,
    /// The prepare handle (its memory: a `Vec<u64>` of `handle_words`).
    handle: *mut c_void,
    handle_words: usize,
    epfd: c_int,
    fds: usize,
    policy: LoopSpin,
}

enum Slot {
    Unset,
    Off,
    On(Spinner),
}

thread_local! {
    static SPINNER: RefCell<Slot> = const { RefCell::new(Slot::Unset) };
}

/// Bytes went out on a watched socket: an answer (a reply, the next request) may follow soon.
pub fn wrote() {
    loop_spin::wrote();
}

/// The spin budget: `GRENACHE_NODE_POLL_US` µs, default 0 (off), at most 1000.
fn budget() -> Duration {
    loop_spin::budget_from_env("GRENACHE_NODE_POLL_US")
}

/// Adds `fd` (a socket of this thread's loop `lp`) to the sockets polled before the loop sleeps.
pub fn watch(env: sys::napi_env, lp: *mut sys::uv_loop_s, fd: c_int) {
    SPINNER.with(|s| {
        let mut s = s.borrow_mut();
        if matches!(*s, Slot::Unset) {
            *s = match start(env, lp) {
                Some(sp) => Slot::On(sp),
                None => Slot::Off,
            };
        }
        if let Slot::On(sp) = &mut *s {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
            // SAFETY: a live epoll descriptor and a live socket descriptor.
            if unsafe { libc::epoll_ctl(sp.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } == 0 {
                sp.fds += 1;
            }
        }
    });
}

/// Removes `fd` (before it is closed).
pub fn unwatch(fd: c_int) {
    SPINNER.with(|s| {
        if let Slot::On(sp) = &mut *s.borrow_mut() {
            // SAFETY: as in `watch`; a descriptor not in the set is an error, ignored.
            if unsafe { libc::epoll_ctl(sp.epfd, libc::EPOLL_CTL_DEL, fd, ptr::null_mut()) } == 0 {
                sp.fds = sp.fds.saturating_sub(1);
            }
        }
    });
}

/// Sets the spinner of this thread up: `None` when it is turned off or cannot be.
fn start(env: sys::napi_env, lp: *mut sys::uv_loop_s) -> Option<Spinner> {
    let budget = budget();
    if budget.is_zero() || lp.is_null() {
        return None;
    }
    // SAFETY: plain libc and libuv calls on the loop's own thread; the handle's memory is zeroed
    // and of libuv's size for it, and lives until the close callback frees it.
    unsafe {
        let epfd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if epfd < 0 {
            return None;
        }
        let words = uv_handle_size(UV_PREPARE).div_ceil(8).max(1);
        let mut mem = vec![0u64; words];
        let handle = mem.as_mut_ptr().cast::<c_void>();
        std::mem::forget(mem);
        if uv_prepare_init(lp, handle) != 0 || uv_prepare_start(handle, on_prepare) != 0 {
            drop(Vec::from_raw_parts(handle as *mut u64, words, words));
            libc::close(epfd);
            return None;
        }
        // It never keeps the process alive.
        uv_unref(handle);
        sys::napi_add_env_cleanup_hook(env, Some(cleanup), ptr::null_mut());
        Some(Spinner { lp, handle, handle_words: words, epfd, fds: 0, policy: LoopSpin::new(budget) })
    }
}

impl Spinner {
    fn spin(&mut self) {
        if self.fds == 0 {
            return;
        }
        // SAFETY: the loop of this thread, running.
        let timeout = unsafe { uv_backend_timeout(self.lp) };
        let timeout = u64::try_from(timeout).ok().map(Duration::from_millis); // -1: no bound
        let epfd = self.epfd;
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: a live epoll descriptor and room for one event.
        self.policy.before_sleep(timeout, || unsafe { libc::epoll_wait(epfd, ev.as_mut_ptr(), 1, 0) } > 0);
    }
}

/// `[spins, hits]` of this thread's spinner (zeros when it is off): spins done before the loop
/// slept, and those that found a socket readable.
#[napi_derive::napi]
pub fn spin_stats() -> Vec<f64> {
    SPINNER.with(|s| match &*s.borrow() {
        Slot::On(sp) => {
            let (spins, hits) = sp.policy.stats();
            vec![spins as f64, hits as f64]
        }
        _ => vec![0.0, 0.0],
    })
}

unsafe extern "C" fn on_prepare(_handle: *mut c_void) {
    SPINNER.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut()
            && let Slot::On(sp) = &mut *s
        {
            sp.spin();
        }
    });
}

/// The environment is going away: the handle is closed and the epoll set too.
unsafe extern "C" fn cleanup(_arg: *mut c_void) {
    let slot = SPINNER.with(|s| std::mem::replace(&mut *s.borrow_mut(), Slot::Off));
    if let Slot::On(sp) = slot {
        // SAFETY: the handle was initialised on this thread's loop and is closed once; its memory
        // is freed in the close callback.
        unsafe {
            *(sp.handle as *mut usize) = sp.handle_words;
            uv_close(sp.handle, on_closed);
            libc::close(sp.epfd);
        }
    }
}

unsafe extern "C" fn on_closed(handle: *mut c_void) {
    // SAFETY: `data` (the handle's first field) holds the size of its memory, set in `cleanup`.
    unsafe {
        let words = *(handle as *mut usize);
        drop(Vec::from_raw_parts(handle as *mut u64, words, words));
    }
}
