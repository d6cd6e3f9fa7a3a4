//! In-flight one-shot operations whose completion fires exactly once.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
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
///
/// An operation started from inside a completion that a task of the same runtime runs (a client
/// that sends its next request from the previous one's callback) is not spawned: that task runs
/// it next, which saves a spawn and a trip through the scheduler per operation. Such a chain still
/// yields to other tasks (tokio's cooperative budget), and closing aborts it like a task.
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

/// The next operation a task runs after the one whose completion started it.
struct Continuation(Pin<Box<dyn Future<Output = Option<Continuation>> + Send>>);

/// Armed on a worker thread while a task runs a completion (see [`run_op`]): the first operation
/// that completion starts on the same runtime is handed back to the task instead of spawned.
struct ContinuationSlot {
    runtime: usize,
    /// The abort handle of the task that runs the completion (aborts the continuation too).
    abort: Option<tokio::task::AbortHandle>,
    next: Option<Continuation>,
}

thread_local! {
    static CONTINUATION: RefCell<Option<ContinuationSlot>> = const { RefCell::new(None) };
}

/// The abort handle of the task whose armed, empty slot (of runtime `runtime`) would take an
/// operation started now: `Some` (its handle) when there is such a slot, `None` otherwise.
fn free_slot(slot: &RefCell<Option<ContinuationSlot>>, runtime: usize) -> Option<Option<tokio::task::AbortHandle>> {
    let slot = slot.try_borrow().ok()?;
    match slot.as_ref() {
        Some(s) if s.runtime == runtime && s.next.is_none() => Some(s.abort.clone()),
        _ => None,
    }
}

/// Puts `op` in the armed, empty slot of runtime `runtime`, or gives it back when there is none.
fn offer_continuation(slot: &RefCell<Option<ContinuationSlot>>, runtime: usize, op: Continuation) -> std::result::Result<(), Continuation> {
    let Ok(mut slot) = slot.try_borrow_mut() else { return Err(op) };
    match slot.as_mut() {
        Some(s) if s.runtime == runtime && s.next.is_none() => {
            s.next = Some(op);
            Ok(())
        }
        _ => Err(op),
    }
}

/// One operation: awaits `fut`, claims the operation and runs its completion with the
/// continuation slot armed; resolves to the operation that completion started, if any.
///
/// A combinator rather than an `async fn`: an `async fn` would hold `fut` twice (as its argument
/// and as the future it awaits), and an operation started from a completion is boxed whole, once
/// per operation (a C client's request future doubled to over 1 KiB, past the allocator's fast
/// path).
fn run_op<T, F, D>(guard: Guard, fut: F, runtime: usize) -> impl Future<Output = Option<Continuation>> + Send + 'static
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
    D: FnOnce(Result<T>) + Send + 'static,
{
    futures_util::FutureExt::map(fut, move |out| complete_op::<T, D>(guard, out, runtime))
}

/// The end of [`run_op`], once its future has its output.
fn complete_op<T, D>(guard: Guard, out: Result<T>, runtime: usize) -> Option<Continuation>
where
    T: Send + 'static,
    D: FnOnce(Result<T>) + Send + 'static,
{
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
    let p = claimed?;
    let abort = p.abort.clone();
    match p.done.downcast::<D>() {
        Ok(d) => {
            let previous = CONTINUATION.with(|c| c.replace(Some(ContinuationSlot { runtime, abort, next: None })));
            ops.run_completion(move || (*d)(out));
            CONTINUATION.with(|c| c.replace(previous)).and_then(|s| s.next)
        }
        Err(_) => {
            ops.finish_running();
            None
        }
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
        let runtime = rt.id();
        // Started from a completion that a task of this runtime is running: that task runs this
        // operation next, instead of a new task (no spawn, no extra hop through the scheduler).
        // Its abort handle is known now, so the operation is registered with one lock.
        let chained = CONTINUATION.with(|c| free_slot(c, runtime));
        let id = {
            let mut st = self.lock();
            if st.closed {
                drop(st);
                done(Err(cancelled()));
                return;
            }
            let id = st.next;
            st.next += 1;
            let abort = chained.clone().flatten();
            st.pending.insert(id, Pending { done: Box::new(done), cancel: cancel_done::<T, D>, abort });
            id
        };
        let guard = Guard { ops: self.clone(), id, armed: true };
        // Boxed where it is built: the future is moved no further.
        let op = Continuation(Box::pin(run_op::<T, F, D>(guard, fut, runtime)));
        let op = if chained.is_some() {
            // Nothing ran on this thread since `free_slot`: the slot is still free.
            match CONTINUATION.with(|c| offer_continuation(c, runtime, op)) {
                Ok(()) => return,
                Err(op) => op,
            }
        } else {
            op
        };
        let task = rt.handle().spawn(async move {
            let Continuation(op) = op;
            let mut next = op.await;
            while let Some(Continuation(op)) = next {
                // A chain of operations that complete at once must still let other tasks run.
                tokio::task::coop::consume_budget().await;
                next = op.await;
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
        // Only close() waits (after setting `closed` under this lock); std's notify is a syscall
        // even without waiters, so skip it on the common path.
        if st.running == 0 && st.closed {
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

pub(crate) fn cancelled() -> Error {
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

    /// Starts op `i` of a chain: each completion starts the next until `n`; records the task each
    /// op's future ran on.
    fn chain(rt: Runtime, ops: Ops, i: usize, n: usize, log: Arc<Mutex<Vec<Option<tokio::task::Id>>>>, done: mpsc::Sender<()>) {
        let (rt2, ops2) = (rt.clone(), ops.clone());
        ops.spawn(
            &rt,
            {
                let log = log.clone();
                async move {
                    log.lock().expect("lock").push(tokio::task::try_id());
                    Ok(i)
                }
            },
            move |r: Result<usize>| {
                assert_eq!(r.map_err(|e| e.kind()), Ok(i));
                if i + 1 < n {
                    chain(rt2, ops2, i + 1, n, log, done);
                } else {
                    done.send(()).expect("send");
                }
            },
        );
    }

    #[test]
    fn an_op_started_by_a_completion_runs_on_the_same_task() {
        let rt = rt();
        let ops = Ops::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        chain(rt.clone(), ops.clone(), 0, 50, log.clone(), tx);
        rx.recv_timeout(Duration::from_secs(10)).expect("chain finished");
        let log = log.lock().expect("lock");
        assert_eq!(log.len(), 50);
        assert!(log.iter().all(|id| id.is_some() && *id == log[0]), "not one task: {log:?}");
        assert_eq!(ops.pending(), 0);
        rt.shutdown();
    }

    #[test]
    fn a_long_chain_lets_other_tasks_run() {
        let rt = Runtime::new(RuntimeOptions { worker_threads: 1, ..Default::default() }).expect("rt");
        let ops = Ops::new();
        let progress = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(usize::MAX));
        let (tx, rx) = mpsc::channel();
        fn step(rt: Runtime, ops: Ops, i: usize, progress: Arc<AtomicUsize>, seen: Arc<AtomicUsize>, tx: mpsc::Sender<()>) {
            let (rt2, ops2) = (rt.clone(), ops.clone());
            ops.spawn(&rt, async move { Ok(()) }, move |_r: Result<()>| {
                progress.store(i, Ordering::SeqCst);
                if i == 10 {
                    // A task of its own: it must run before the chain of immediate ops ends.
                    let (p, s) = (progress.clone(), seen.clone());
                    rt2.spawn(async move { s.store(p.load(Ordering::SeqCst), Ordering::SeqCst) });
                }
                if i < 20_000 {
                    step(rt2, ops2, i + 1, progress, seen, tx);
                } else {
                    tx.send(()).expect("send");
                }
            });
        }
        step(rt.clone(), ops, 0, progress, seen.clone(), tx);
        rx.recv_timeout(Duration::from_secs(30)).expect("chain finished");
        assert!(seen.load(Ordering::SeqCst) < 20_000, "the other task waited for the whole chain");
        rt.shutdown();
    }

    #[test]
    fn closing_inside_a_completion_cancels_the_op_it_started() {
        let rt = rt();
        let ops = Ops::new();
        let (tx, rx) = mpsc::channel();
        let (rt2, ops2) = (rt.clone(), ops.clone());
        ops.spawn(&rt, async { Ok(()) }, move |_r: Result<()>| {
            let tx2 = tx.clone();
            ops2.spawn(
                &rt2,
                async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(())
                },
                move |r: Result<()>| tx2.send(r.map_err(|e| e.kind())).expect("send"),
            );
            ops2.close(Duration::from_secs(5));
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("fired"), Err(ErrorKind::Cancelled));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "fired twice");
        rt.shutdown();
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
        // Only close() waits, after closing the gate under this lock: skip the syscall otherwise.
        if g.1 == 0 && g.0 {
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
