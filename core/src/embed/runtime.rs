//! The runtime object: owns the tokio worker threads.

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

thread_local! {
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// True on a worker thread of any embed [`Runtime`] (where completion and handler callbacks run).
///
/// Blocking facade calls refuse to run there: they would wait for work that this very thread may
/// have to do.
pub fn on_worker_thread() -> bool {
    ON_WORKER.with(|c| c.get())
}

/// Options of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Number of worker threads. `0` means "one per core". Default `0`.
    pub worker_threads: usize,
    /// How long [`Runtime::shutdown`] waits for tasks to finish before it gives up on them.
    /// Default 5 s.
    pub shutdown_timeout: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { worker_threads: 0, shutdown_timeout: Duration::from_secs(5) }
    }
}

/// The environment variable that sets the worker count of [`shared_runtime`].
pub const WORKER_THREADS_ENV: &str = "GRENACHE_WORKER_THREADS";

impl RuntimeOptions {
    /// The defaults, with `worker_threads` from `GRENACHE_WORKER_THREADS` when it is set (a number
    /// that does not parse is an [`ErrorKind::InvalidArgument`] error rather than silently one
    /// worker per core).
    pub fn from_env() -> Result<RuntimeOptions> {
        let mut options = RuntimeOptions::default();
        if let Some(v) = std::env::var_os(WORKER_THREADS_ENV) {
            let v = v.to_string_lossy();
            options.worker_threads =
                v.trim().parse().map_err(|_| Error::invalid(format!("{WORKER_THREADS_ENV} must be a number of threads, not {v:?}")))?;
        }
        Ok(options)
    }
}

static SHARED: Mutex<Option<Runtime>> = Mutex::new(None);

/// The process's runtime for faces that have no runtime object of their own (Python, Node):
/// started on first use with [`RuntimeOptions::from_env`], and started again when it was shut
/// down. Every caller gets a clone of the same runtime.
pub fn shared_runtime() -> Result<Runtime> {
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = guard.as_ref()
        && rt.is_running()
    {
        return Ok(rt.clone());
    }
    let rt = Runtime::new(RuntimeOptions::from_env()?)?;
    *guard = Some(rt.clone());
    Ok(rt)
}

/// A duration given in whole milliseconds, as the faces take them (`None` stays `None`).
pub fn millis(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

/// A tokio multi-thread runtime owned by an embedder.
///
/// Cheap to clone: every clone refers to the same runtime. Handles created from it keep only a
/// [`tokio::runtime::Handle`]; once [`Runtime::shutdown`] ran, their operations complete with
/// [`ErrorKind::Cancelled`] instead of running.
#[derive(Clone, Debug)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rt: Mutex<Option<Arc<tokio::runtime::Runtime>>>,
    handle: tokio::runtime::Handle,
    shutdown_timeout: Duration,
}

impl Runtime {
    /// Starts the worker threads.
    pub fn new(options: RuntimeOptions) -> Result<Runtime> {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.enable_all().thread_name("grenache-worker").on_thread_start(|| ON_WORKER.with(|c| c.set(true)));
        if options.worker_threads > 0 {
            if options.worker_threads > 1024 {
                return Err(Error::invalid("worker_threads must be at most 1024"));
            }
            b.worker_threads(options.worker_threads);
        }
        let rt = b.build().map_err(Error::from)?;
        let handle = rt.handle().clone();
        Ok(Runtime { inner: Arc::new(Inner { rt: Mutex::new(Some(Arc::new(rt))), handle, shutdown_timeout: options.shutdown_timeout }) })
    }

    /// An identity of the runtime (equal for its clones), to tell runtimes apart.
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// The tokio handle, to spawn tasks on the workers.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.inner.handle
    }

    /// True until [`Runtime::shutdown`] was called.
    pub fn is_running(&self) -> bool {
        self.inner.rt.lock().map(|g| g.is_some()).unwrap_or(false)
    }

    /// Spawns a task on the workers.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.inner.handle.spawn(fut));
    }

    /// Runs `fut` on the workers and waits for its output, at most `timeout`, from a thread that is
    /// not a worker thread.
    ///
    /// Errors: [`ErrorKind::InvalidState`] on a worker thread, [`ErrorKind::Timeout`] after
    /// `timeout`, [`ErrorKind::Cancelled`] when the runtime is shut down.
    pub fn block_on<T, F>(&self, timeout: Duration, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        if on_worker_thread() {
            return Err(Error::new(ErrorKind::InvalidState, "a blocking call was made on a runtime worker thread (inside a callback)"));
        }
        // A Mutex + Condvar rather than a channel: waiting on them needs no `thread::current()`
        // handle, which std would keep in a thread-local of the caller's (C) thread forever.
        let slot: Arc<(Mutex<Option<Result<T>>>, Condvar)> = Arc::new((Mutex::new(None), Condvar::new()));
        let tx = Arc::clone(&slot);
        let sender = Sender(Some(tx));
        self.spawn(async move {
            let mut sender = sender;
            let out = fut.await;
            sender.send(out);
        });
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*slot;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            if Arc::strong_count(&slot) == 1 {
                // The task was dropped without an answer: the runtime is shut down.
                return Err(Error::new(ErrorKind::Cancelled, "the runtime was shut down"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::timeout(format!("no answer within {timeout:?}")));
            }
            g = cv.wait_timeout(g, left.min(Duration::from_millis(100))).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Stops the workers and joins them (waiting at most the configured shutdown timeout for tasks
    /// to finish). Pending operations are dropped, so their completions fire with
    /// [`ErrorKind::Cancelled`]. Idempotent.
    ///
    /// On a worker thread (inside a callback) joining is impossible, so the shutdown is handed to a
    /// helper thread and this returns at once.
    pub fn shutdown(&self) {
        let rt = match self.inner.rt.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        let Some(rt) = rt else { return };
        let timeout = self.inner.shutdown_timeout;
        let stop = move || match Arc::try_unwrap(rt) {
            Ok(rt) => rt.shutdown_timeout(timeout),
            Err(rt) => drop(rt),
        };
        if on_worker_thread() || tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new().name("grenache-shutdown".into()).spawn(stop);
        } else {
            stop();
        }
    }
}

type Slot<T> = Arc<(Mutex<Option<Result<T>>>, Condvar)>;

/// The answering side of [`Runtime::block_on`]. When it is dropped unsent (runtime shut down),
/// the waiter notices within 100 ms from the slot's reference count.
struct Sender<T>(Option<Slot<T>>);

impl<T> Sender<T> {
    fn send(&mut self, v: Result<T>) {
        if let Some(slot) = self.0.take() {
            let (lock, cv) = &*slot;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
            cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_runs_and_shutdown_cancels() {
        let rt = Runtime::new(RuntimeOptions { worker_threads: 1, ..Default::default() }).expect("rt");
        let v = rt.block_on(Duration::from_secs(5), async { Ok(41 + 1) }).expect("value");
        assert_eq!(v, 42);
        rt.shutdown();
        assert!(!rt.is_running());
        let r = rt.block_on(Duration::from_secs(5), async { Ok(1) });
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::Cancelled));
        rt.shutdown();
    }

    #[test]
    fn block_on_refuses_worker_threads_and_times_out() {
        let rt = Runtime::new(RuntimeOptions { worker_threads: 2, ..Default::default() }).expect("rt");
        let rt2 = rt.clone();
        let inner = rt
            .block_on(
                Duration::from_secs(5),
                async move { Ok(rt2.block_on(Duration::from_secs(1), async { Ok(()) }).map_err(|e| e.kind())) },
            )
            .expect("outer");
        assert_eq!(inner, Err(ErrorKind::InvalidState));
        let r = rt.block_on(Duration::from_millis(50), async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        });
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::Timeout));
        rt.shutdown();
    }
}
