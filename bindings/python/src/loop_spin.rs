//! A bounded busy-poll before an asyncio loop that drives the package's sockets (the `async def`
//! WS server's, `inloop.rs`; the asyncio client's, `aioclient.rs`) goes to sleep: 50 µs by
//! default when the process may run on two CPUs or more, `GRENACHE_PYTHON_POLL_US` µs when it
//! is set (0 turns it off). The policy is the core's ([`grenache::transport::loop_spin`]): only
//! after bytes went out on one of those sockets, at most the budget (and the loop's own
//! timeout), yielding the CPU between polls, resting after fruitless spins.
//!
//! The package wraps the `select` of the loop's selector (`_spin_before_sleep` in the package):
//! before a `select` that may block, it calls [`_loop_spin`] with the selector's descriptor,
//! which polls it with the GIL released. An epoll descriptor is readable when one of the
//! descriptors it watches is ready, so anything the loop waits for (a socket of the package or
//! of the application, its self-pipe) ends the spin, and the `select` after it returns at once.

use std::cell::RefCell;
use std::time::Duration;

use grenache::transport::loop_spin::LoopSpin;
use pyo3::prelude::*;

thread_local! {
    /// The spin of the loop (or the poller, `lf.rs`) of this thread.
    static SPIN: RefCell<Option<LoopSpin>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's spin, made with the budget (`_poll_us`) on first use; `None`
/// when the budget is zero or the spin is already in use on this thread.
pub(crate) fn with_thread_spin<R>(f: impl FnOnce(&mut LoopSpin) -> R) -> Option<R> {
    let budget = crate::loop_spin_budget();
    if budget.is_zero() {
        return None;
    }
    SPIN.with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        Some(f(s.get_or_insert_with(|| LoopSpin::new(budget))))
    })
}

/// Whether `fd` is readable now (`poll(2)` without waiting).
fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; a closed or invalid descriptor answers POLLNVAL, not UB.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// The loop of this thread is about to wait on its selector `epfd` for at most `timeout`
/// seconds (`None`: no bound): polls it first, when the policy allows, for up to the budget
/// (`_poll_us`). Returns true when it turned ready meanwhile.
#[pyfunction]
#[pyo3(signature = (epfd, timeout=None))]
pub(crate) fn _loop_spin(py: Python<'_>, epfd: i32, timeout: Option<f64>) -> bool {
    let timeout = timeout.map(|t| if t > 0.0 { Duration::from_secs_f64(t.min(86_400.0)) } else { Duration::ZERO });
    with_thread_spin(|spin| {
        let b = spin.plan(timeout)?;
        Some(py.detach(|| spin.spin(b, || readable(epfd))))
    })
    .flatten()
    .unwrap_or(false)
}

/// `(spins, hits)` of this thread's loop: spins done before the loop slept, and those that found
/// it ready.
#[pyfunction]
pub(crate) fn _spin_stats() -> (u64, u64) {
    SPIN.with(|s| s.try_borrow().ok().and_then(|s| s.as_ref().map(LoopSpin::stats)).unwrap_or((0, 0)))
}

/// The loops' budget in microseconds (`GRENACHE_PYTHON_POLL_US` or the default, read once): 0
/// when off.
#[pyfunction]
pub(crate) fn _poll_us() -> u64 {
    crate::loop_spin_budget().as_micros() as u64
}
