//! In-flight one-shot operations whose completion fires exactly once.

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

use super::Runtime;

thread_local! {
    static IN_COMPLETION: Cell<usize> = const { Cell::new(0) };
}

/// True while the current thread runs a completion fired by an [`Ops`] set.
pub fn in_completion() -> bool {
    IN_COMPLETION.with(|c| c.get() > 0)
}

/// A completion, type-erased (`Box<D>` for the op's concrete closure type `D`).
type Done = Box<dyn Any + Send>;

/// Hashes the sequential op ids with one multiplication (Fibonacci hashing) instead of SipHash:
/// the ids are ours, not attacker-chosen, and the map is touched twice per operation.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The set of in-flight operations of one handle (a client, a link...).
///
/// [`Ops::spawn`] runs a future on a [`Runtime`] and fires its completion exactly once: with the
/// future's output; with [`ErrorKind::Cancelled`] when [`Ops::close`] runs first (closing fires the
/// pending completions on the closing thread, then waits for completions already running on other
/// threads, so after `close` returns no completion of this set runs any more); or with
/// `Cancelled` when the runtime drops the task (shut down).
#[derive(Clone)]
pub struct Ops {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Ops").field("pending", &st.pending.len()).field("closed", &st.closed).finish()
    }
}

struct Inner {
    state: Mutex<State>,
    idle: Condvar,
}

struct State {
    next: u64,
    pending: IdMap<Pending>,
    running: usize,
    closed: bool,
}

struct Pending {
    done: Done,
    /// Fires `done` with `Cancelled` (monomorphised for its type).
    cancel: fn(Done),
    abort: Option<tokio::task::AbortHandle>,
}

impl Pending {
    fn fire_cancelled(self) {
        (self.cancel)(self.done)
    }
}

fn cancel_done<T, D: FnOnce(Result<T>) + Send + 'static>(done: Done) {
    if let Ok(d) = done.downcast::<D>() {
        (*d)(Err(cancelled()));
    }
}

/// Fires the completion when the task is dropped before it finished (runtime shut down, aborted).
struct Guard {
    ops: Ops,
    id: u64,
    armed: bool,
}

impl Guard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            self.ops.fire_pending(self.id);
        }
    }
}

impl Default for Ops {
    fn default() -> Self {
        Ops::new()
    }
}

impl Ops {
    /// An empty, open set.
    pub fn new() -> Ops {
        Ops {
            inner: Arc::new(Inner {
                state: Mutex::new(State { next: 1, pending: IdMap::default(), running: 0, closed: false }),
                idle: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many operations are in flight.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// True once [`Ops::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Runs `fut` on `rt` and calls `done` exactly once with its output (see the type docs).
    ///
    /// When the set is already closed, `done` fires at once, on this thread, with `Cancelled`.
    pub fn spawn<T, F, D>(&self, rt: &Runtime, fut: F, done: D)
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
        D: FnOnce(Result<T>) + Send + 'static,
    {
        let id = {
            let mut st = self.lock();
            if st.closed {
                drop(st);
                done(Err(cancelled()));
                return;
            }
            let id = st.next;
            st.next += 1;
            st.pending.insert(id, Pending { done: Box::new(done), cancel: cancel_done::<T, D>, abort: None });
            id
        };
        let guard = Guard { ops: self.clone(), id, armed: true };
        let task = rt.handle().spawn(async move {
            let out = fut.await;
            let ops = guard.ops.clone();
            // Claim the operation; if close() already claimed it, its completion fired Cancelled.
            let claimed = {
                let mut st = ops.lock();
                let p = st.pending.remove(&guard.id);
                if p.is_some() {
                    st.running += 1;
                }
                p
            };
            guard.disarm();
            if let Some(p) = claimed {
                match p.done.downcast::<D>() {
                    Ok(d) => ops.run_completion(move || (*d)(out)),
                    Err(_) => ops.finish_running(),
                }
            }
        });
        let mut st = self.lock();
        if let Some(p) = st.pending.get_mut(&id) {
            p.abort = Some(task.abort_handle());
        }
    }

    /// Fires the completion of `id` with `Cancelled` if it is still pending.
    fn fire_pending(&self, id: u64) {
        let p = {
            let mut st = self.lock();
            let p = st.pending.remove(&id);
            if p.is_some() {
                st.running += 1;
            }
            p
        };
        if let Some(p) = p {
            self.run_completion(move || p.fire_cancelled());
        }
    }

    fn run_completion(&self, f: impl FnOnce()) {
        IN_COMPLETION.with(|c| c.set(c.get() + 1));
        // A panicking completion must not poison the bookkeeping.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        IN_COMPLETION.with(|c| c.set(c.get() - 1));
        self.finish_running();
    }

    fn finish_running(&self) {
        let mut st = self.lock();
        st.running -= 1;
        if st.running == 0 {
            self.inner.idle.notify_all();
        }
    }

    /// Closes the set: pending completions fire with `Cancelled` on this thread and their tasks
    /// are aborted; then waits (at most `wait`) until completions running on other threads have
    /// returned. Inside a completion it does not wait (that completion would wait for itself).
    /// Later [`Ops::spawn`] calls complete at once with `Cancelled`. Idempotent.
    pub fn close(&self, wait: Duration) {
        let drained: Vec<Pending> = {
            let mut st = self.lock();
            st.closed = true;
            let ps: Vec<Pending> = st.pending.drain().map(|(_, p)| p).collect();
            st.running += ps.len();
            ps
        };
        for p in drained {
            if let Some(a) = &p.abort {
                a.abort();
            }
            self.run_completion(move || p.fire_cancelled());
        }
        if in_completion() {
            return;
        }
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        while st.running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.inner.idle.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "the operation was cancelled: its handle was freed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::RuntimeOptions;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn rt() -> Runtime {
        Runtime::new(RuntimeOptions { worker_threads: 2, ..Default::default() }).expect("rt")
    }

    #[test]
    fn completes_with_the_output() {
        let rt = rt();
        let ops = Ops::new();
        let (tx, rx) = mpsc::channel();
        ops.spawn(&rt, async { Ok(7) }, move |r: Result<i32>| tx.send(r.map_err(|e| e.kind())).expect("send"));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("fired"), Ok(7));
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "fired twice");
        assert_eq!(ops.pending(), 0);
        rt.shutdown();
    }

    #[test]
    fn close_cancels_pending_exactly_once_and_later_spawns() {
        let rt = rt();
        let ops = Ops::new();
        let n = Arc::new(AtomicUsize::new(0));
        let kinds = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..10 {
            let n = n.clone();
            let kinds = kinds.clone();
            ops.spawn(
                &rt,
                async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                },
                move |r: Result<()>| {
                    n.fetch_add(1, Ordering::SeqCst);
                    kinds.lock().expect("lock").push(r.map_err(|e| e.kind()));
                },
            );
        }
        ops.close(Duration::from_secs(5));
        assert_eq!(n.load(Ordering::SeqCst), 10);
        assert!(kinds.lock().expect("lock").iter().all(|k| *k == Err(ErrorKind::Cancelled)));
        let n2 = n.clone();
        ops.spawn(&rt, async { Ok(()) }, move |r: Result<()>| {
            assert!(r.is_err());
            n2.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 11);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(n.load(Ordering::SeqCst), 11);
        rt.shutdown();
    }

    #[test]
    fn runtime_shutdown_cancels_pending() {
        let rt = rt();
        let ops = Ops::new();
        let (tx, rx) = mpsc::channel();
        ops.spawn(
            &rt,
            async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            },
            move |r: Result<()>| tx.send(r.map_err(|e| e.kind())).expect("send"),
        );
        rt.shutdown();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("fired"), Err(ErrorKind::Cancelled));
        ops.close(Duration::from_secs(1));
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "fired twice");
    }

    #[test]
    fn gate_close_waits_for_running_calls_and_refuses_new_ones() {
        let gate = Gate::new();
        let g2 = gate.clone();
        let (started_tx, started_rx) = mpsc::channel();
        let finished = Arc::new(AtomicUsize::new(0));
        let f2 = finished.clone();
        let t = std::thread::spawn(move || {
            g2.run(|| {
                started_tx.send(()).expect("send");
                std::thread::sleep(Duration::from_millis(100));
                f2.fetch_add(1, Ordering::SeqCst);
            })
        });
        started_rx.recv_timeout(Duration::from_secs(5)).expect("started");
        gate.close(Duration::from_secs(5));
        assert_eq!(finished.load(Ordering::SeqCst), 1, "close returned while a call was running");
        assert!(t.join().expect("join"));
        assert!(!gate.run(|| panic!("must not run after close")));
        // Closing from inside a call does not wait for itself.
        let gate = Gate::new();
        let g3 = gate.clone();
        assert!(gate.run(move || g3.close(Duration::from_secs(5))));
    }

    #[test]
    fn racing_close_and_completion_fire_once() {
        let rt = rt();
        for _ in 0..50 {
            let ops = Ops::new();
            let n = Arc::new(AtomicUsize::new(0));
            for _ in 0..20 {
                let n = n.clone();
                ops.spawn(&rt, async { Ok(()) }, move |_r: Result<()>| {
                    n.fetch_add(1, Ordering::SeqCst);
                });
            }
            ops.close(Duration::from_secs(5));
            // Completions that were claimed by tasks may still be running until close returned.
            assert_eq!(n.load(Ordering::SeqCst), 20);
        }
        rt.shutdown();
    }
}

thread_local! {
    static IN_GATE: Cell<usize> = const { Cell::new(0) };
}

/// Guards the calls of a long-lived callback (a subscription's message handler) so that after
/// [`Gate::close`] returns, no call is running or will start: close waits for running calls,
/// except one running on the closing thread itself (a callback that closes its own handle).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    inner: Arc<(Mutex<(bool, usize)>, Condvar)>,
}

impl Gate {
    /// A new open gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Runs `f` unless the gate is closed; returns false when closed.
    pub fn run(&self, f: impl FnOnce()) -> bool {
        {
            let mut g = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 {
                return false;
            }
            g.1 += 1;
        }
        IN_GATE.with(|c| c.set(c.get() + 1));
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        IN_GATE.with(|c| c.set(c.get() - 1));
        let mut g = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        g.1 -= 1;
        if g.1 == 0 {
            self.inner.1.notify_all();
        }
        true
    }

    /// Closes the gate and waits (at most `wait`) for running calls on other threads.
    pub fn close(&self, wait: Duration) {
        let mut g = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = true;
        let own = IN_GATE.with(|c| c.get());
        let deadline = Instant::now() + wait;
        while g.1 > own {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match self.inner.1.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}
