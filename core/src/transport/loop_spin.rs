//! A bounded busy-poll before a host event loop sleeps, for the faces that drive sockets on a
//! language's own loop (Node's libuv loop, Python's asyncio loop).
//!
//! Why: when a request goes to another process, its answer comes back tens of microseconds
//! later, and by then the loop has gone to sleep in `epoll_wait`; waking a sleeping thread costs
//! about as much again on a small machine (the scheduler, and a CPU leaving its idle state). A
//! sequential caller pays that on every round trip, and so does a server between a sequential
//! client's requests. A face calls [`LoopSpin::before_sleep`] when its loop has nothing left to
//! do and is about to block: the thread first polls for readiness for up to the budget, and the
//! loop does not sleep when something turned ready meanwhile.
//!
//! The policy keeps an idle or lightly loaded process from spending anything on it: it spins
//! only when bytes went out on one of the face's sockets since the last spin that found nothing
//! ([`wrote`]: a request or a reply was sent, and an answer may follow), never when the loop
//! will not sleep (a zero timeout) and for at most the loop's own timeout, and after
//! [`MISSES_BEFORE_REST`] fruitless spins in a row (sparse traffic) it rests for
//! [`REST_SLEEPS`] sleeps of the loop.
//!
//! Between two polls the thread yields its CPU (`sched_yield`), so a spin only uses a CPU that
//! nothing else runnable wants.
//!
//! Each face picks its default: the Node face spins only when `GRENACHE_NODE_POLL_US` is set
//! ([`budget_from_env`]: there the spin measured a loss on a two-core machine whose wake-ups
//! were fast, docs/benchmarks.md); the Python face's asyncio loops spin [`DEFAULT_BUDGET`]
//! unless `GRENACHE_PYTHON_POLL_US` says otherwise ([`budget_from_env_or_default`]: an asyncio
//! loop wakes with cold caches and runs its wake-up in Python, which costs more than Node's).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Fruitless spins in a row before a rest.
pub const MISSES_BEFORE_REST: u32 = 4;
/// Sleeps of the loop a rest lasts.
pub const REST_SLEEPS: u32 = 64;
/// The largest budget taken from the environment.
pub const MAX_BUDGET: Duration = Duration::from_millis(1);
/// The budget of a loop that spins by default ([`budget_from_env_or_default`]).
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(50);

thread_local! {
    /// Bytes were written to a socket of this thread's loop since the last spin that found
    /// nothing.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// Bytes went out on a socket driven by this thread's loop: an answer (a reply, the next
/// request) may follow soon.
pub fn wrote() {
    ARMED.with(|a| a.set(true));
}

/// The spin budget in the environment variable `var`, in microseconds (at most [`MAX_BUDGET`]);
/// zero when it is unset, empty or not a number.
pub fn budget_from_env(var: &str) -> Duration {
    std::env::var(var).map_or(Duration::ZERO, |v| parse_budget(&v))
}

/// Microseconds, at most [`MAX_BUDGET`]; zero when not a number.
fn parse_budget(v: &str) -> Duration {
    Duration::from_micros(v.trim().parse::<u64>().unwrap_or(0)).min(MAX_BUDGET)
}

/// The spin budget of a loop that spins by default: the environment variable `var` when it is
/// set and not empty (as [`budget_from_env`]: microseconds, at most [`MAX_BUDGET`], and 0 or
/// anything but a number turns the spin off); else [`DEFAULT_BUDGET`] when the process may run
/// on two CPUs or more at once (its CPU affinity and cgroup quota, as
/// [`std::thread::available_parallelism`] reads them), and zero on one, where a spin could
/// only delay the thread that would answer.
pub fn budget_from_env_or_default(var: &str) -> Duration {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => parse_budget(&v),
        _ => default_budget(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// [`DEFAULT_BUDGET`] with `cpus` CPUs to run on.
fn default_budget(cpus: usize) -> Duration {
    if cpus >= 2 { DEFAULT_BUDGET } else { Duration::ZERO }
}

/// The spin of one loop (one thread).
#[derive(Debug)]
pub struct LoopSpin {
    budget: Duration,
    misses: u32,
    rest: u32,
    spins: u64,
    hits: u64,
}

impl LoopSpin {
    /// A spin of at most `budget` before each sleep.
    pub fn new(budget: Duration) -> LoopSpin {
        LoopSpin { budget, misses: 0, rest: 0, spins: 0, hits: 0 }
    }

    /// The loop is about to sleep for at most `timeout` (`None`: until something happens):
    /// when the policy allows, calls `ready` until it says something is ready or the budget
    /// (bounded by `timeout`) runs out. Returns true when it found something ready (the loop
    /// will not sleep). [`plan`](Self::plan) then [`spin`](Self::spin), for a caller that
    /// does something around the spin only (releases a lock).
    pub fn before_sleep(&mut self, timeout: Option<Duration>, ready: impl FnMut() -> bool) -> bool {
        match self.plan(timeout) {
            Some(budget) => self.spin(budget, ready),
            None => false,
        }
    }

    /// The policy's answer before a sleep of at most `timeout`: the budget to spin for, or
    /// `None` not to spin (a sleep of a rest counts here).
    pub fn plan(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        // Only after a write, until a spin finds nothing: with nothing sent, nothing is expected
        // back soon; after one, the answers to it are.
        if self.budget.is_zero() || !ARMED.with(Cell::get) {
            return None;
        }
        if self.rest > 0 {
            self.rest -= 1;
            return None;
        }
        match timeout {
            Some(t) if t.is_zero() => None, // the loop will not sleep: work is pending
            Some(t) => Some(self.budget.min(t)),
            None => Some(self.budget),
        }
    }

    /// Calls `ready` until it says something is ready or `budget` runs out; returns whether it
    /// found something.
    pub fn spin(&mut self, budget: Duration, mut ready: impl FnMut() -> bool) -> bool {
        self.spins += 1;
        let start = Instant::now();
        loop {
            if ready() {
                self.misses = 0;
                self.hits += 1;
                return true;
            }
            if start.elapsed() >= budget {
                break;
            }
            // Leaves the CPU to any other runnable thread (the peer, on a busy machine).
            std::thread::yield_now();
        }
        ARMED.with(|a| a.set(false));
        self.misses += 1;
        if self.misses >= MISSES_BEFORE_REST {
            self.misses = 0;
            self.rest = REST_SLEEPS;
        }
        false
    }

    /// Spins done, and those that found something ready.
    pub fn stats(&self) -> (u64, u64) {
        (self.spins, self.hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_only_after_a_write_and_rests_after_misses() {
        std::thread::spawn(|| {
            let mut s = LoopSpin::new(Duration::from_micros(200));
            // Nothing written: no spin.
            assert!(!s.before_sleep(None, || panic!("polled without a write")));
            wrote();
            // The loop will not sleep: no spin.
            assert!(!s.before_sleep(Some(Duration::ZERO), || panic!("polled before a zero timeout")));
            let mut polls = 0;
            assert!(s.before_sleep(None, || {
                polls += 1;
                polls == 3
            }));
            assert_eq!(s.stats(), (1, 1));
            // A hit keeps it armed; a miss disarms it.
            assert!(!s.before_sleep(Some(Duration::from_micros(50)), || false));
            assert!(!s.before_sleep(None, || panic!("polled after a miss without a write")));
            // Misses in a row: a rest of REST_SLEEPS sleeps without polling.
            for _ in 1..MISSES_BEFORE_REST {
                wrote();
                assert!(!s.before_sleep(None, || false));
            }
            for _ in 0..REST_SLEEPS {
                wrote();
                assert!(!s.before_sleep(None, || panic!("polled during a rest")));
            }
            assert!(s.before_sleep(None, || true));
            assert_eq!(s.stats(), (MISSES_BEFORE_REST as u64 + 2, 2));
        })
        .join()
        .expect("the test thread panicked");
    }

    #[test]
    fn off_without_a_budget_and_bounded_by_the_environment() {
        std::thread::spawn(|| {
            wrote();
            assert!(!LoopSpin::new(Duration::ZERO).before_sleep(None, || panic!("polled with no budget")));
        })
        .join()
        .expect("the test thread panicked");
        assert_eq!(budget_from_env("GRENACHE_TEST_UNSET_POLL_US"), Duration::ZERO);
        // A loop that spins by default: on one CPU it does not.
        assert_eq!(default_budget(1), Duration::ZERO);
        assert_eq!(default_budget(2), DEFAULT_BUDGET);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(budget_from_env_or_default("GRENACHE_TEST_UNSET_POLL_US"), default_budget(cpus));
    }
}
