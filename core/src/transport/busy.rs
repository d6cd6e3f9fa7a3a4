//! Bounded busy-polling of a wait that is likely to end within microseconds.
//!
//! A sequential round trip on loopback or a fast LAN spends most of its time in the kernel putting
//! the waiting thread to sleep and waking it again (on a virtual machine the wake-up of an idle
//! CPU is a hypervisor exit). A thread that keeps polling for the few microseconds the answer
//! takes skips both. This is what Go's scheduler, Linux's `SO_BUSY_POLL` and the guest `haltpoll`
//! idle driver do; here it is applied to exactly two waits:
//!
//! * a WebSocket client request that is alone on its socket, waiting for its reply;
//! * a WebSocket server connection with nothing running, waiting for its client's next request.
//!
//! The poll yields to the runtime between tries (`tokio::task::yield_now`), so other tasks keep
//! running and the runtime polls its I/O driver without blocking. That only sees new data when the
//! spinning thread is the one that drives I/O: a current-thread runtime, or a multi-thread runtime
//! with one worker (in a task spawned on it, not in `block_on` on another thread). On a multi-thread runtime with more workers another, parked, worker holds the
//! I/O driver; spinning there costs CPU and gains nothing (measured), so it is not done.
//!
//! Bounds:
//! * each spin lasts at most the budget, then the wait goes on as a normal sleeping wait;
//! * a wait only spins when the previous wait of the same socket ended within the budget (a
//!   socket whose answers take longer stops spinning after one miss, and starts again once an
//!   answer comes within the budget);
//! * one spinning wait per thread at a time (a thread with many hot sockets spins for one).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

thread_local! {
    /// Whether a wait is spinning on this thread.
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current task runs where yielding lets the runtime poll its I/O driver: a
/// current-thread runtime, or a multi-thread runtime with a single worker.
pub(crate) fn runtime_can_spin() -> bool {
    let Ok(h) = tokio::runtime::Handle::try_current() else { return false };
    match h.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => true,
        // On the worker itself (a spawned task), not in `block_on` on another thread, whose
        // yields do not poll the driver.
        tokio::runtime::RuntimeFlavor::MultiThread => h.metrics().num_workers() == 1 && tokio::task::try_id().is_some(),
        _ => false,
    }
}

/// The busy-poll state of one socket: its budget, the thread whose runtime drives it, and
/// whether its last wait ended within the budget.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    budget: Duration,
    /// The thread of the runtime the socket's I/O is driven on, when that runtime can spin.
    home: Option<ThreadId>,
    hot: AtomicBool,
}

impl BusyPoll {
    /// For a socket driven by the current task's runtime. A zero budget never spins.
    pub(crate) fn new(budget: Duration) -> Self {
        let home = (!budget.is_zero() && runtime_can_spin()).then(|| std::thread::current().id());
        BusyPoll { budget, home, hot: AtomicBool::new(true) }
    }

    /// Whether this socket may ever spin (a budget, on a runtime that can).
    pub(crate) fn enabled(&self) -> bool {
        self.home.is_some()
    }

    /// Whether a wait starting now should spin: enabled, on the socket's own thread, the last
    /// wait was short, and no other wait is spinning on this thread.
    fn should_spin(&self) -> bool {
        self.home.is_some_and(|t| t == std::thread::current().id()) && self.hot.load(Ordering::Relaxed) && !SPINNING.get()
    }

    /// Records how long a wait took (for one that did not spin, or spun and then slept).
    pub(crate) fn observe(&self, waited: Duration) {
        if self.home.is_some() {
            self.hot.store(waited <= self.budget, Ordering::Relaxed);
        }
    }

    /// Polls `poll` until it is ready or the budget is spent, yielding to the runtime between
    /// tries. `None`: not ready (or not spinning at all); the caller then waits normally and
    /// reports the whole wait to [`BusyPoll::observe`]. A ready result marks the socket hot.
    pub(crate) async fn spin<T>(&self, mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Option<T> {
        if !self.should_spin() {
            return None;
        }
        let _guard = Spinning::enter();
        let until = Instant::now() + self.budget;
        loop {
            if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await {
                self.hot.store(true, Ordering::Relaxed);
                return Some(v);
            }
            if Instant::now() >= until {
                self.hot.store(false, Ordering::Relaxed);
                return None;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Marks this thread as spinning until dropped. The flag is cleared on the thread that set it
/// even if the future is dropped elsewhere (only possible when a worker moved threads through
/// `block_in_place`, in which case the flag of the other thread is left alone).
struct Spinning {
    thread: ThreadId,
}

impl Spinning {
    fn enter() -> Self {
        SPINNING.set(true);
        Spinning { thread: std::thread::current().id() }
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        if std::thread::current().id() == self.thread {
            SPINNING.set(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn spins_only_where_the_thread_drives_io() {
        assert!(!runtime_can_spin(), "outside a runtime");
        current_thread().block_on(async { assert!(runtime_can_spin()) });
        let one = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        assert!(one.block_on(async { tokio::spawn(async { runtime_can_spin() }).await.expect("join") }));
        assert!(!one.block_on(async { runtime_can_spin() }), "block_on's thread is not the worker");
        let two = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        assert!(!two.block_on(async { tokio::spawn(async { runtime_can_spin() }).await.expect("join") }));
    }

    #[test]
    fn a_ready_wait_is_taken_and_a_slow_one_stops_spinning() {
        current_thread().block_on(async {
            let b = BusyPoll::new(Duration::from_millis(2));
            // Ready at the third try.
            let mut n = 0;
            let got = b.spin(|_| {
                n += 1;
                if n == 3 { Poll::Ready(7) } else { Poll::Pending }
            });
            assert_eq!(got.await, Some(7));
            assert!(b.hot.load(Ordering::Relaxed));
            // Never ready: gives up after the budget and marks the socket cold...
            let t = Instant::now();
            assert_eq!(b.spin(|_| Poll::<()>::Pending).await, None);
            let spent = t.elapsed();
            assert!(spent >= Duration::from_millis(2) && spent < Duration::from_secs(1), "{spent:?}");
            assert!(!b.hot.load(Ordering::Relaxed));
            // ...so the next wait does not spin at all,
            let mut polled = false;
            assert_eq!(
                b.spin(|_| {
                    polled = true;
                    Poll::Ready(())
                })
                .await,
                None
            );
            assert!(!polled);
            // until a wait ends within the budget again.
            b.observe(Duration::from_micros(10));
            assert_eq!(b.spin(|_| Poll::Ready(1)).await, Some(1));
            assert!(!SPINNING.get(), "the thread's flag is cleared");
        });
    }

    #[test]
    fn other_tasks_run_while_a_wait_spins_and_one_spinner_per_thread() {
        current_thread().block_on(async {
            let flag = std::rc::Rc::new(Cell::new(false));
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    let f = flag.clone();
                    // Set by another task: the spin must yield for it to run.
                    tokio::task::spawn_local(async move { f.set(true) });
                    let b = BusyPoll::new(Duration::from_secs(5));
                    let got = b.spin(|_| if flag.get() { Poll::Ready(()) } else { Poll::Pending }).await;
                    assert_eq!(got, Some(()));
                    // While one wait spins, a second one on the same thread does not.
                    let (b1, b2) = (BusyPoll::new(Duration::from_millis(5)), BusyPoll::new(Duration::from_millis(5)));
                    let mut second_polled = false;
                    let first = b1.spin(|_| Poll::<()>::Pending);
                    let second = async {
                        tokio::task::yield_now().await;
                        b2.spin(|_| {
                            second_polled = true;
                            Poll::Ready(())
                        })
                        .await
                    };
                    let (a, b) = tokio::join!(first, second);
                    assert_eq!((a, b), (None, None));
                    assert!(!second_polled);
                })
                .await;
        });
    }

    #[test]
    fn zero_budget_or_multi_worker_never_spins() {
        current_thread().block_on(async {
            let b = BusyPoll::new(Duration::ZERO);
            assert_eq!(b.spin(|_| Poll::Ready(())).await, None);
        });
        let two = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        two.block_on(async {
            tokio::spawn(async {
                let b = BusyPoll::new(Duration::from_millis(1));
                assert_eq!(b.spin(|_| Poll::Ready(())).await, None);
            })
            .await
            .expect("join");
        });
    }
}
