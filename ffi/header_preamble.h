/*
 * grenache.h: the C API of Grenache (DHT-based microservices, wire-compatible with the Node.js
 * reference: grenache-grape, grenache-nodejs-link, -http, -ws).
 *
 * Link with -lgrenache (pkg-config: grenache). Every symbol starts with grenache_, and the
 * library exports nothing else. ABI: programs load libgrenache.so.1 (the SONAME); its functions,
 * structs and enum values stay compatible for as long as that number does (checked against a
 * committed baseline); a later library of the same SONAME only adds.
 *
 * CONVENTIONS
 *
 *  Results.   Fallible calls return a grenache_result: GRENACHE_RESULT_OK (0) or a stable error
 *             code (never renumbered or reused; the same numbers as the Rust, Python and Node
 *             faces). grenache_result_name() gives "ERR_TIMEOUT"-style names,
 *             grenache_result_message() a description.
 *  Pointers.  Every pointer argument is checked: NULL gives GRENACHE_RESULT_NULL_PARAMETER (or
 *             NULL / 0 / false from functions that return those). Strings are NUL-terminated UTF-8
 *             unless a length is passed beside them; invalid UTF-8 gives
 *             GRENACHE_RESULT_INVALID_UTF8. Input buffers are copied: the library keeps no pointer
 *             to them after the call returns.
 *  Outputs.   Out-parameters come last and are written only when the call returns OK.
 *  Ownership. Objects are opaque handles: grenache_X_new() (or another constructor) gives one the
 *             caller owns, grenache_X_free() frees it (NULL is ignored). Pointers that a callback
 *             receives (requests, errors, payloads) are borrowed and valid only until the callback
 *             returns, except a grenache_reply, which the handler owns until it answers it.
 *  Panics.    No Rust panic crosses this ABI: a bug in the library returns GRENACHE_RESULT_PANIC.
 *
 * THREADING
 *
 *  - There is no global runtime. A grenache_runtime owns the worker threads; every handle is
 *    created from one. All callbacks run on those worker threads (or, for cancellations, on the
 *    thread that frees a handle), possibly concurrently with each other: callbacks and the
 *    userdata they get must be thread-safe.
 *  - Every function may be called from any thread. One handle may be used by many threads at
 *    once, except that its _free must not race with other calls on the same handle.
 *  - userdata is always the first parameter of a callback. A one-shot completion callback fires
 *    EXACTLY ONCE: with the result, with an error, or with GRENACHE_RESULT_CANCELLED when its
 *    handle (or the runtime) is freed first; after the handle's _free returns, none of its
 *    completions runs any more (when _free is itself called inside a callback, completions
 *    already running on other threads may still be finishing). Long-lived callbacks (request
 *    handlers, subscriptions, verify_client hooks, Grape event callbacks) are registered with a
 *    free_userdata destructor that runs exactly once, after their last call (also when the
 *    registration fails).
 *  - Inside a callback you may call every non-blocking function (answer replies, start requests,
 *    read errors and requests, even free the handle whose callback is running). Blocking functions
 *    (those documented as "blocks", e.g. binding a server or grenache_runtime_free) return
 *    GRENACHE_RESULT_INVALID_STATE there, since they would wait for the very thread they run on.
 *
 * COVERAGE
 *
 *  Grapes (started with every option of the grape command line, ports, events), Links (options,
 *  lookup, announce, keep-announcing, put/get, mutable items with salt and compare-and-swap), RPC
 *  servers (HTTP/WS, TLS, reply timeout, the WSS verify_client hook) and clients (request, map,
 *  options), PUB/SUB (text and binary frames, verify_client) and TLS settings. Not reachable from
 *  C, on purpose: the HTTP transport's raw streaming mode (_gr: chunked bodies in both
 *  directions; it needs reader/writer handles with back-pressure, a design of its own - send JSON
 *  requests instead), the per-transport tuning knobs (message size limits, connection and pool
 *  limits, PUB/SUB queue policies: the core's defaults apply) and direct DHT (KRPC) calls.
 */
