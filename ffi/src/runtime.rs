//! `grenache_runtime`: the worker threads that run everything.

use grenache_core::embed::{Runtime, RuntimeOptions};

use crate::error::grenache_result;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{try_box, write_handle};

/// A runtime: the worker threads on which every operation and every callback of the handles
/// created from it run. There is no global runtime: create one with `grenache_runtime_new`
/// and free it with `grenache_runtime_free`.
///
/// Handles (servers, clients, links...) keep their own reference to the runtime's threads, so the
/// runtime pointer may be freed before or after them; freeing it first stops the threads, after
/// which the handles' operations complete with `GRENACHE_RESULT_CANCELLED`.
#[derive(Debug)]
pub struct grenache_runtime {
    pub(crate) rt: Runtime,
}

/// Creates a runtime with `worker_threads` worker threads (0: one per CPU core; at most 1024)
/// and writes it to `*out`.
///
/// Latency: with one worker thread, WebSocket sockets busy-poll: a request alone on its socket
/// polls for its reply, and a server socket with nothing running for its next request, for up to
/// 50 us before sleeping, which halves a sequential round trip on loopback at no more CPU time
/// per request. With more workers another, parked, worker drives the sockets and polling would
/// only burn CPU, so it is not done; more workers give more throughput instead.
///
/// Signals: when `SIGPIPE` has its default action (terminate the process), this sets it to
/// ignored, so that a peer closing a socket while it is written to (a TLS record or an HTTP body
/// sent with `writev`) is an error on that socket, not the end of the process. A handler or
/// disposition the application installed itself is left alone. (Python, Node and Ruby already
/// ignore `SIGPIPE`; plain C programs do not.)
///
/// Ownership: the caller owns the result and frees it with `grenache_runtime_free`.
/// Errors: `NULL_PARAMETER` (NULL `out`), `INVALID_ARGUMENT` (too many threads), `IO`.
/// `*out` is written only on success.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_runtime_new(worker_threads: usize, out: *mut *mut grenache_runtime) -> grenache_result {
    ffi_panic_boundary! {
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        ignore_sigpipe_if_default();
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_handle(out, Runtime::new(RuntimeOptions { worker_threads, ..Default::default() }), |rt| grenache_runtime { rt }) }
    }
}

/// Stops the worker threads, waits for them (at most 5 s for running tasks to finish) and frees
/// the runtime. Operations still pending complete with `GRENACHE_RESULT_CANCELLED`, possibly on
/// the calling thread, before this returns. NULL is ignored.
///
/// Call it from a thread of your own. Called inside a callback (on a worker thread), it cannot
/// wait for the workers: the shutdown then continues on a helper thread and this returns at once.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_runtime_free(rt: *mut grenache_runtime) {
    ffi_panic_boundary! {
        let rt = try_box!(rt);
        rt.rt.shutdown();
    }
}

/// Sets `SIGPIPE` to ignored when it has its default action (see `grenache_runtime_new`).
fn ignore_sigpipe_if_default() {
    // SAFETY: `sigaction` with a zeroed, then filled, struct; reading the current action first
    // leaves an application's own handler in place. The check-then-set race with another thread
    // installing a handler at the same instant is the application's own (it would lose either
    // way).
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_DFL {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = libc::SIG_IGN;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGPIPE, &new, std::ptr::null_mut());
        }
    }
}
