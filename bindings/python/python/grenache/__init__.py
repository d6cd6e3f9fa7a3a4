"""Grenache for Python: Grapes, Link, RPC over HTTP and WebSocket, PUB/SUB, DHT put/get.

A thin face over the Rust core of grenache-rs (the same core behind ``libgrenache.so``),
wire-compatible with the Node.js reference (grenache-grape, grenache-nodejs-link/-http/-ws)::

    import grenache

    with grenache.Grape() as grape, grenache.Link(grape.url) as link:
        server = grenache.Server(link, lambda payload, info: "world")
        server.announce("rpc_test")
        client = grenache.Client(link)
        assert client.request("rpc_test", "hello") == "world"

Threading: the library runs its network I/O on its own threads (one per core, started on first
use). Blocking calls release the GIL and can be interrupted with Ctrl-C (the operation then
finishes in the background); a blocking request over plain WS is sent and answered on its
caller's thread once the client has a socket to the worker (``GRENACHE_PYTHON_DIRECT=0`` turns
that off). Request handlers and subscription callbacks run on library
threads, never on the caller's; a handler may block (it runs on a pool of its own). Every
``*_async`` method is a coroutine for asyncio; results reach the event loop in batches (one
wake-up of the loop for all the replies that arrived while it was busy), as do the requests
for ``async def`` handlers. Over plain WS, an ``async def`` handler's server reads and writes
its sockets on its event loop itself, a plain handler's server on the threads that run the
handler, and ``request_async`` on the caller's loop (no thread hand-off in the way;
``GRENACHE_PYTHON_IN_LOOP=0`` turns all three off).

Payloads are any JSON-serialisable Python value (``json.dumps``/``json.loads``); they travel as
JSON, like the reference's.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import collections
import functools
import inspect
import json
import os
import selectors
import sys
import threading
import traceback
import types
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import _native

__all__ = [
    "Grape",
    "Link",
    "Keypair",
    "Server",
    "Client",
    "Publisher",
    "Subscriber",
    "ServerTls",
    "ClientTls",
    "RequestInfo",
    "Reply",
    "ReplyError",
    "GrenacheError",
    "InputError",
    "TransportError",
    "DiscoveryError",
    "RpcError",
    "TlsError",
    "LibraryError",
    "TransportClosedError",
    "version",
]  # and one class per error kind, appended below

Json = Any
"""Any JSON-serialisable value."""

# ---------------------------------------------------------------------------------------------
# Errors: one class per error kind of the core, derived from its table (``_native.error_kinds()``)
# under the six family classes, as in the Ruby face; ``code`` is the stable number, ``name`` the
# ``ERR_*`` string and ``message`` the same text as the C, Ruby and Node errors'.


class GrenacheError(Exception):
    """An error of the library: ``code`` (a stable integer, the C result code), ``name``
    (``"ERR_TIMEOUT"``...) and ``message``. Rescue a kind's class (``TimeoutError``,
    ``RemoteError``...) or a family (``TransportError``...)."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message and message != name else name)
        self.code = code
        self.name = name
        self.message = message


class InputError(GrenacheError):
    """1xx: the caller's input."""


class TransportError(GrenacheError):
    """2xx: the transport."""


class DiscoveryError(GrenacheError):
    """3xx: Grape and DHT."""


class RpcError(GrenacheError):
    """4xx: RPC failures reported by the other side."""


class TlsError(GrenacheError):
    """5xx: TLS."""


class LibraryError(GrenacheError):
    """9xx: bugs in the library, cancellations."""


_FAMILIES = {c.__name__: c for c in (InputError, TransportError, DiscoveryError, RpcError, TlsError, LibraryError)}

# Python's own exception a kind's class also is, so that ``except TimeoutError`` (the builtin)
# or ``except ValueError`` catch it too.
_ALSO = {
    "TimeoutError": builtins.TimeoutError,
    "LookupEmptyError": LookupError,
    "ConnectError": ConnectionError,
    "ClosedError": ConnectionError,
    "PunchTimeoutError": ConnectionError,
    "InvalidArgumentError": ValueError,
    "InvalidUtf8Error": ValueError,
}

_BY_CODE = {}
for _code, _name, _family, _class, _message in _native.error_kinds():
    _cls = type(_class, (_FAMILIES[_family],) + ((_ALSO[_class],) if _class in _ALSO else ()), {
        "__doc__": f"{_message} (``{_name}``, {_code}).",
        "__module__": __name__,
        "CODE": _code,
    })
    globals()[_class] = _cls
    __all__.append(_class)
    _BY_CODE[_code] = _cls
del _code, _name, _family, _class, _message, _cls

TransportClosedError = ClosedError  # noqa: F821 (made above): the name of earlier versions
"""The connection closed with the request in flight (``ERR_TRANSPORT_CLOSE``)."""


def _make_error(code: int, name: str, message: str) -> GrenacheError:
    return _BY_CODE.get(code, GrenacheError)(code, name, message)


_native._set_error_factory(_make_error)
# At exit, the pools' threads stop calling handlers before the interpreter is torn down.
atexit.register(_native._finalize)


def _invalid(message: str) -> GrenacheError:
    return _make_error(101, "ERR_INVALID_ARGUMENT", message)


class ReplyError(Exception):
    """Raise it in a request handler to answer the client with an error; the client gets
    ``RemoteError`` with this message (by convention an ``"ERR_..."`` string)."""


def version() -> str:
    """The library's version."""
    return _native.version()


# ---------------------------------------------------------------------------------------------
# asyncio glue


def _settle(fut: asyncio.Future, err: Optional[BaseException], result: Optional[str], decode: Callable[[str], Any]) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
        return
    try:
        fut.set_result(decode(result))
    except Exception as e:  # a result that does not decode
        fut.set_exception(e)


async def _await(start: Callable[[Callable[[Optional[BaseException], Optional[str]], None]], None], decode: Callable[[str], Any]) -> Any:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(err: Optional[BaseException], result: Optional[str]) -> None:
        try:
            loop.call_soon_threadsafe(_settle, fut, err, result, decode)
        except RuntimeError:
            pass  # the loop was closed: nobody waits any more

    start(done)
    return await fut


def _on_loop_shutdown(loop: asyncio.AbstractEventLoop, on_shutdown: Callable[[], None]) -> Any:
    """Calls ``on_shutdown`` on the loop when it shuts down (the end of ``asyncio.run``, or any
    ``loop.shutdown_asyncgens()``), through an async generator the loop tracks. Returns the
    generator, which the caller keeps (it refers to the loop)."""

    async def sentinel() -> Any:
        try:
            yield
        finally:
            on_shutdown()

    agen = sentinel()

    def start() -> None:
        # The first step registers the generator with the loop running in this thread.
        try:
            agen.asend(None).send(None)
        except StopIteration:
            pass

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        start()
    else:
        loop.call_soon_threadsafe(start)
    return agen


class _Results:
    """The inbox of one event loop for the results of ``*_async`` calls: the library queues
    them without the GIL and wakes the loop once per batch; the loop settles the futures.

    Only the loop holds it (its reader callback), and only it holds the native inbox: when the
    loop shuts down or is closed (which drops its readers), the inbox is closed or freed, and
    results that arrive later are dropped instead of keeping their futures, and so the loop,
    alive."""

    __slots__ = ("inbox", "_fd", "_agen", "clients", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.inbox = _native.Inbox()
        self._fd = self.inbox.fileno()
        loop.add_reader(self._fd, self._drain)
        self._agen = _on_loop_shutdown(loop, self._close)
        # Client -> its _LoopClient on this loop (kept here: the loop keeps them, not the
        # clients, and they go with the loop).
        self.clients: Optional["weakref.WeakKeyDictionary[Client, _LoopClient]"] = None

    def _drain(self) -> None:
        # The token of an ``*_async`` call is its future; the result is JSON text. One native
        # call settles the whole batch.
        self.inbox.settle(_loads)

    def _close(self) -> None:
        if self.clients:
            for lc in list(self.clients.values()):
                lc.close("ERR_TRANSPORT_CLOSE", "ERR_TRANSPORT_CLOSE: the event loop shut down")
        try:
            asyncio.get_running_loop().remove_reader(self._fd)
        except Exception:
            pass  # not on the loop (garbage-collected): nothing watches the descriptor any more
        self.inbox.close()


# Loop -> weak reference to its _Results. Only the loop holds the box (its reader callback): the
# box's sentinel generator refers to the loop, and a strong value here would keep the loop alive.
_results_by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref]" = weakref.WeakKeyDictionary()


def _results(loop: asyncio.AbstractEventLoop) -> _Results:
    ref = _results_by_loop.get(loop)
    box = ref() if ref is not None else None
    if box is None or box.inbox.closed:
        box = _Results(loop)
        _results_by_loop[loop] = weakref.ref(box)
    return box


async def _call(loop: asyncio.AbstractEventLoop, start: Callable[[Any, Any], None]) -> Any:
    fut = loop.create_future()
    start(_results(loop).inbox, fut)
    return await fut


def _ms(seconds: Optional[float]) -> Optional[int]:
    if seconds is None:
        return None
    if seconds < 0:
        raise _invalid("a duration cannot be negative")
    return int(seconds * 1000)


# One encoder for every payload: ``json.dumps`` with ``separators`` builds a new one per call.
_dumps: Callable[[Json], str] = json.JSONEncoder(separators=(",", ":")).encode

# ``json.loads`` runs two regular expressions (the whitespace around the value) besides the C
# scanner: results without whitespace around them (what servers send) go to the scanner alone.
_scan = json.JSONDecoder().scan_once


def _loads(text: str) -> Json:
    try:
        value, end = _scan(text, 0)
    except Exception:
        return json.loads(text)  # leading whitespace, or invalid: json.loads says which
    if end == len(text):
        return value
    return json.loads(text)  # trailing whitespace, or a second value (an error)


_Coroutine = types.CoroutineType
# Results that are never awaitable (``inspect.isawaitable`` is a call into Python).
_PLAIN = frozenset((str, int, float, bool, type(None), dict, list, tuple))


# ---------------------------------------------------------------------------------------------
# Grape and Link


class Grape:
    """A Grape (DHT node + HTTP API) running in this process, started by the constructor.

    ``dht_port``/``api_port`` 0 pick free ports; ``bootstrap`` lists other Grapes' DHT
    addresses (``"127.0.0.1:20001"``). ``dht_state`` names a file that keeps the DHT node's id
    and routing table across restarts (read at start, so a restarted Grape rejoins without
    ``bootstrap``; written at stop and every minute). Stop it with ``stop()`` or a ``with``
    block.

    The other keyword arguments are the Grape's numeric options, by the same names in every
    face (durations in milliseconds): ``peer_max_age_ms``, ``node_liveness_ms``, ``max_tables``,
    ``max_values``, ``max_peers``, ``max_payload_size``, ``max_connections``,
    ``announce_window_ms``, ``lookup_window_ms``, and the limits against hostile load
    ``max_connections_per_ip``, ``header_timeout_ms``, ``body_timeout_ms``, ``body_min_rate``,
    ``idle_timeout_ms``, ``max_key_len``, ``peer_store_bytes``, ``max_records_per_ip``,
    ``queries_per_ip``, and the DHT's IPv6 (BEP 32) ``dht_ipv6`` (0 IPv4 only, 1 dual-stack
    where the host has IPv6 (default), 2 dual-stack required) and ``announce_ipv6`` (1: announce
    over IPv6 too). An unknown name raises ``InvalidArgumentError``."""

    def __init__(
        self,
        dht_port: int = 0,
        api_port: int = 0,
        bootstrap: Sequence[str] = (),
        host: Optional[str] = None,
        dht_state: Optional[str] = None,
        **options: int,
    ) -> None:
        self._g = _native.Grape(dht_port, api_port, list(bootstrap), host, dht_state, options or None)

    @property
    def dht_port(self) -> int:
        return self._g.dht_port

    @property
    def api_port(self) -> int:
        return self._g.api_port

    @property
    def url(self) -> str:
        """The HTTP API's URL on loopback, for a ``Link``."""
        return f"http://127.0.0.1:{self.api_port}"

    def stop(self) -> None:
        """Stops the Grape and frees both ports (idempotent)."""
        self._g.stop()

    def __enter__(self) -> "Grape":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


Keypair = _native.Keypair
"""An ed25519 key pair for mutable DHT items: ``Keypair.generate()``,
``Keypair.from_secret_hex(hex)``, ``.secret_hex``, ``.public_hex``."""

ServerTls = _native.ServerTls
"""TLS settings of a server: ``ServerTls(cert_pem, key_pem, client_ca_pem=None,
client_auth="none" | "optional" | "required")`` (PEM text)."""

ClientTls = _native.ClientTls
"""TLS settings of a client: ``ClientTls(ca_pem, cert_pem=None, key_pem=None)`` (PEM text)."""


class Link:
    """A client of one Grape's HTTP API: lookups (cached briefly), announces, DHT put/get."""

    def __init__(self, grape: str = "http://127.0.0.1:30001", *, request_timeout: Optional[float] = None, lookup_cache: Optional[float] = None) -> None:
        self._l = _native.Link(grape, _ms(request_timeout), _ms(lookup_cache))

    def lookup(self, name: str) -> List[str]:
        """The ``"host:port"`` of every worker announcing ``name`` (raises ``LookupEmptyError``
        when there is none)."""
        return json.loads(self._l.lookup(name))

    async def lookup_async(self, name: str) -> List[str]:
        return await _await(lambda done: self._l.lookup_cb(name, done), json.loads)

    def announce(self, name: str, port: int) -> None:
        """Announces once that this host serves ``name`` on ``port``."""
        self._l.announce(name, port)

    async def announce_async(self, name: str, port: int) -> None:
        await _await(lambda done: self._l.announce_cb(name, port, done), lambda _: None)

    def start_announcing(self, name: str, port: int, interval: float = 1.0) -> None:
        """Keeps announcing every ``interval`` seconds (jittered) until ``stop_announcing``."""
        self._l.start_announcing(name, port, _ms(interval))

    def stop_announcing(self, name: str, port: int) -> bool:
        return self._l.stop_announcing(name, port)

    def unannounce(self, name: str, port: int) -> int:
        """Removes the announce of ``name`` on ``port`` from the Grapes at once (grenache-rs
        Grapes; a Node reference Grape raises ``GrapeError`` ``ERR_REQ_NOTFOUND`` and keeps it
        until it expires). Stop announcing it first. Returns how many DHT nodes removed it."""
        return self._l.unannounce(name, port)

    def pin_service(self, name: str, keys: List[str]) -> None:
        """Pins the service ``name`` to its ed25519 public keys (hex; two during a key
        rotation; ``[]`` unpins): lookups of ``name``, and requests of clients built on this
        Link, use only addresses with a valid signed proof under one of them, so an address
        announced by anyone else is never used (see docs/signed-announce.md)."""
        self._l.pin_service(name, list(keys))

    def sign_announcements(self, name: str, keys: List[Keypair], *, ttl: float = 600.0) -> None:
        """Makes every announce of ``name`` through this Link (and servers built on it) publish
        a signed proof of the address under each key, valid ``ttl`` seconds, for clients that
        pinned the service's public keys. ``[]`` stops signing."""
        self._l.sign_announcements(name, list(keys), _ms(ttl) or 0)

    def put(self, value: Json) -> str:
        """Stores an immutable item in the DHT; returns its hex hash."""
        return self._l.put(_dumps(value))

    def put_mutable(self, key: Keypair, value: Json, seq: int, *, salt: Optional[str] = None, cas: Optional[int] = None) -> str:
        """Signs (with ``key``) and stores a mutable item; returns its hex target. Raises
        ``SeqTooLowError`` or ``CasMismatchError`` when the DHT refuses the update."""
        return self._l.put_mutable(key, _dumps(value), seq, salt, cas)

    def get(self, hash: str, *, salt: Optional[str] = None) -> Optional[dict]:
        """The item with hex ``hash`` as a dict (``{"v": ..., ...}``), or ``None``."""
        return json.loads(self._l.get(hash, salt))

    def close(self) -> None:
        """Cancels calls in flight and stops every keep-announcing loop."""
        self._l.close()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# RPC


class Reply:
    """The handle to answer one request, exactly once, from any thread, now or later. A second
    answer raises ``AlreadyUsedError`` (``ERR_ALREADY_USED``); a reply dropped unanswered answers
    ``ERR_NO_REPLY``. Handlers normally just return their result; take the reply with
    ``info.defer()`` to answer later."""

    __slots__ = ("_r",)

    def __init__(self, native: "_native.Reply") -> None:
        self._r = native

    def send(self, value: Json) -> None:
        """Answers with ``value`` (any JSON value)."""
        self._r.send(_dumps(value))

    def send_json(self, text: str) -> None:
        """Answers with JSON text, written to the wire as it is."""
        self._r.send(text)

    def error(self, message: str) -> None:
        """Answers with an error: the client gets ``RemoteError`` with exactly this text."""
        self._r.error(str(message))

    def abandon(self) -> None:
        """Gives the reply up: the client gets ``ERR_NO_REPLY`` at once."""
        self._r.abandon()

    @property
    def answered(self) -> bool:
        return self._r.answered

    @property
    def closed(self) -> bool:
        """True when nobody waits for the answer any more (answered, the client went away, or
        the server's reply timeout fired)."""
        return self._r.closed


class RequestInfo:
    """What a handler knows about a request besides its payload, and its reply."""

    __slots__ = ("fingerprint", "_reply", "_deferred")

    def __init__(self, fingerprint: Optional[str], reply: Optional[Reply] = None) -> None:
        self.fingerprint = fingerprint
        """The client certificate's SHA-1 fingerprint (``"AA:BB:..."``) over TLS with a client
        certificate, else ``None``."""
        self._reply = reply
        self._deferred = False

    def defer(self) -> Reply:
        """Takes over the reply: what the handler returns is then ignored, and the client waits
        for ``Reply.send`` / ``Reply.error`` (or the server's ``reply_timeout``)."""
        if self._reply is None:
            raise _invalid("this request has no reply to defer")
        self._deferred = True
        return self._reply

    @property
    def deferred(self) -> bool:
        return self._deferred


Handler = Callable[[Json, RequestInfo], Any]


def _answer(reply: Reply, info: RequestInfo, result: Any) -> None:
    if not info.deferred:
        reply.send(result)


def _answer_exception(reply: Reply, e: BaseException) -> None:
    if isinstance(e, ReplyError):
        message = str(e) or "ERR_REPLY"
    else:
        traceback.print_exception(type(e), e, e.__traceback__)
        message = "ERR_HANDLER_PANIC"
    if not reply.answered:
        reply.error(message)


async def _complete(awaitable: Any, reply: Reply, info: RequestInfo) -> None:
    try:
        result = await awaitable
        # ``_answer`` inlined: on the path of every ``async def`` handler's reply.
        if not info._deferred:
            reply._r.send(_dumps(result))
    except asyncio.CancelledError:
        # The loop is shutting down (or the task was cancelled): the client gets ERR_NO_REPLY.
        if not reply.answered:
            reply.abandon()
        raise
    except BaseException as e:  # answered, never lost: the loop only logs what escapes
        _answer_exception(reply, e)


_library_loop: Optional[asyncio.AbstractEventLoop] = None
_library_loop_lock = threading.Lock()


def _owned_loop() -> asyncio.AbstractEventLoop:
    """The library's own event loop, on a daemon thread, for ``async def`` handlers of servers
    made outside any running loop."""
    global _library_loop
    with _library_loop_lock:
        if _library_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="grenache-asyncio", daemon=True).start()
            _library_loop = loop
        return _library_loop


def _wrap_handler(handler: Handler, loop: Optional[asyncio.AbstractEventLoop]) -> Callable[[str, Optional[str], Any], None]:
    def call(payload_json: str, fingerprint: Optional[str], native_reply: Any) -> None:
        reply = Reply(native_reply)
        info = RequestInfo(fingerprint, reply)
        try:
            result = handler(_loads(payload_json), info)
            if type(result) is _Coroutine or (type(result) not in _PLAIN and inspect.isawaitable(result)):
                target = loop if loop is not None and not loop.is_closed() else _owned_loop()
                asyncio.run_coroutine_threadsafe(_complete(result, reply, info), target)
            else:
                _answer(reply, info, result)
        except BaseException as e:
            _answer_exception(reply, e)

    return call


def _is_async(handler: Any) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))


if sys.version_info >= (3, 12):

    def _start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> "asyncio.Task[None]":
        # Runs the coroutine at once, up to its first real wait: a handler that answers without
        # waiting never goes through the loop's queue. A loop's task factory makes the task.
        if loop.get_task_factory() is not None:
            return loop.create_task(coro)
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:
    # Before 3.12 asyncio has no eager tasks. The task (asyncio's C ``Task``) is made as usual,
    # which schedules its first step at the end of the loop's ready queue; on asyncio's own
    # loops that step is taken back from the queue at once and run, as the task's own step:
    # ``asyncio.current_task()`` is the task during it (``asyncio.timeout`` and the like work),
    # as with 3.12's ``eager_start``. A handler that answers without waiting then never goes
    # through the loop's queue, and its reply leaves with the batch's. Any other loop (uvloop),
    # a task factory, or a call made inside a running task gets ``loop.create_task``.
    _current_tasks = getattr(asyncio.tasks, "_current_tasks", None)

    def _start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> "asyncio.Task[None]":
        ready = getattr(loop, "_ready", None)
        if (
            not isinstance(loop, asyncio.BaseEventLoop)
            or type(ready) is not collections.deque
            or _current_tasks is None
            or loop.get_task_factory() is not None
            or _current_tasks.get(loop) is not None
        ):
            return loop.create_task(coro)
        task = asyncio.Task(coro, loop=loop)
        step = ready.pop() if ready else None
        if step is None or getattr(step._callback, "__self__", None) is not task:
            if step is not None:
                ready.append(step)  # not the task's step: leave the queue as it was
            return task
        # ``Handle._run`` without its frame: the task's step reports what its coroutine raises
        # through the task, and lets only SystemExit and KeyboardInterrupt out, as here.
        step._context.run(step._callback, *step._args)
        return task


class _Calls:
    """The inbox of an ``async def`` handler's server on its event loop: requests arrive in
    batches (one wake-up of the loop per batch) and each runs as a task of that loop.

    Only the loop holds it (its reader callback; the native server holds just the queue): when
    the loop shuts down or is closed, the inbox is closed or freed and requests are answered
    ``ERR_NO_REPLY`` at once."""

    __slots__ = ("inbox", "_fd", "_loop", "_handler", "_tasks", "_agen", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        self.inbox = _native.Inbox()
        self._fd = self.inbox.fileno()
        self._loop = loop
        self._handler = handler
        self._tasks: dict = {}  # running task -> its reply
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.add_reader(self._fd, self._drain)
        else:
            loop.call_soon_threadsafe(loop.add_reader, self._fd, self._drain)
        self._agen = _on_loop_shutdown(loop, self._shutdown)

    def _drain(self) -> None:
        self._run(self.inbox.drain())
        if self.inbox.finished:
            # The server closed and every request it received was handed over.
            self._loop.remove_reader(self._fd)
            self.inbox.close()

    def _run(self, items: List[Any]) -> None:
        """Runs the handler on each ``(payload_json, fingerprint, native_reply)``."""
        handler = self._handler
        for payload_json, fingerprint, native_reply in items:
            reply = Reply(native_reply)
            info = RequestInfo(fingerprint, reply)
            try:
                result = handler(_loads(payload_json), info)
                if type(result) is not _Coroutine and (type(result) in _PLAIN or not inspect.isawaitable(result)):
                    _answer(reply, info, result)
                    continue
                task = _start_task(self._loop, _complete(result, reply, info))
            except BaseException as e:
                _answer_exception(reply, e)
                continue
            if not task.done():
                self._tasks[task] = reply
                task.add_done_callback(self._tasks.pop)

    def _shutdown(self) -> None:
        """The loop shuts down: what is queued and what arrives later is answered
        ``ERR_NO_REPLY`` (the inbox closes), and so is every handler still running (tasks
        started after ``asyncio.run`` cancelled its tasks included)."""
        self.inbox.close()
        for task, reply in list(self._tasks.items()):
            try:
                if not reply.answered:
                    reply.abandon()
            except GrenacheError:
                pass  # answered meanwhile from another thread
            task.cancel()
        try:
            self._loop.remove_reader(self._fd)
        except Exception:
            pass


# The environment variable that turns the in-loop paths off ("0"): the sockets of ``async def``
# WS servers and the plain WS requests of ``Client.request_async``.
_IN_LOOP_ENV = "GRENACHE_PYTHON_IN_LOOP"

# Events a socket driven by the loop reports (``_native.LoopConn``).
_EV_BLOCKED = 0  # its kernel buffer is full: watch it for writability
_EV_DRAINED = 1  # draining, it answered its last request: close it (4001)


# Polling before an asyncio loop sleeps (50 us by default on two CPUs or more;
# ``GRENACHE_PYTHON_POLL_US`` microseconds, read once, 0: off): see ``_spin_before_sleep``.
_POLL_US = _native._poll_us()
_spinning_loops: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()


def _spin_before_sleep(loop: asyncio.AbstractEventLoop) -> None:
    """Has ``loop`` poll its selector for up to ``_POLL_US`` microseconds (50 by default on two
    CPUs or more; ``GRENACHE_PYTHON_POLL_US``, 0: never) before it sleeps, once bytes went out on
    a socket the package drives on it (a reply of an ``async def`` WS server, a request of the
    asyncio client): the answer to them then finds the loop awake. Between processes, where
    waking a sleeping asyncio loop costs about a round trip, this about doubles sequential
    rates. The poll yields the CPU to any other runnable thread, ends as soon as anything the
    loop watches is ready, and rests after fruitless polls (the core's ``loop_spin`` policy).
    Installed once per loop, on the selector of asyncio's own selector loops (the ``select`` of
    that one selector object); other loops (uvloop) are left alone."""
    if not _POLL_US or not isinstance(loop, asyncio.BaseEventLoop) or loop in _spinning_loops:
        return
    _spinning_loops.add(loop)
    sel = getattr(loop, "_selector", None)
    own = getattr(sel, "__dict__", None)
    if not isinstance(sel, selectors.BaseSelector) or own is None or "select" in own:
        return
    try:
        epfd = sel.fileno()
    except (AttributeError, NotImplementedError, ValueError):
        return  # a selector without one descriptor to poll
    select = sel.select
    spin = _native._loop_spin

    def spinning_select(timeout: Optional[float] = None) -> Any:
        if timeout is None or timeout > 0:
            spin(epfd, timeout)
        return select(timeout)

    sel.select = spinning_select


def _in_loop_default() -> bool:
    return os.environ.get(_IN_LOOP_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _limit(limits: Optional[Dict[str, int]], name: str, default: int) -> int:
    for k, v in (limits or {}).items():
        if k.replace("_", "").lower() == name:
            return int(v)
    return default


class _LoopCalls(_Calls):
    """The in-loop path of an ``async def`` handler's plain WS server: the server hands each
    socket, once upgraded, to the loop (through the inbox), and the loop reads and writes it
    itself (``_native.LoopConn``): a request and its reply cross no thread. Requests read in one
    readiness event run in one batch; the replies they give go out in one write per socket.

    The limits the core's WS server keeps on the sockets it serves are kept here:
    ``max_connections`` and ``max_connections_per_ip`` (a socket over them is closed at once),
    ``ws_idle_timeout_ms`` (a socket that sent no request for that long, with none running, is
    closed with 1000). Pings to silent sockets (``ws_ping_interval_ms``, ``ws_pong_timeout_ms``)
    are not sent: the idle limit closes a dead peer's socket."""

    __slots__ = ("_conns", "_per_ip", "_weak", "_arm", "_draining", "_expired", "_waiters", "_max", "_max_ip", "_idle", "_sweeper")

    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Handler, reply_timeout: Optional[float], limits: Optional[Dict[str, int]]) -> None:
        self._conns: dict = {}  # fd -> (LoopConn, peer IP)
        self._per_ip: dict = {}
        self._weak = weakref.ref(self)
        self._arm = functools.partial(loop.call_later, reply_timeout) if reply_timeout is not None else None
        self._draining = False
        self._expired = False
        self._waiters: list = []
        self._max = _limit(limits, "maxconnections", 10_000)
        self._max_ip = _limit(limits, "maxconnectionsperip", 2_000)
        self._idle = _limit(limits, "wsidletimeoutms", 300_000) / 1000
        self._sweeper: Optional[asyncio.TimerHandle] = None
        super().__init__(loop, handler)

    def _drain(self) -> None:
        for sock in self.inbox.drain():
            self._adopt(sock)
        if self.inbox.finished and not (self._draining and self._conns):
            # The server closed: its sockets close as the core's WS server closes its own.
            # (Shutting down, they finish draining first, and the inbox stays open until the
            # last one ends: answers given on other threads reach the loop through it.)
            self._stop_inbox()
            for fd in list(self._conns):
                self._end(fd, 1001)

    def _stop_inbox(self) -> None:
        try:
            self._loop.remove_reader(self._fd)
        except Exception:
            pass  # the loop is closed
        self.inbox.close()

    def _adopt(self, sock: Any) -> None:
        ip = sock.remote_ip
        n = self._per_ip.get(ip, 0)
        if self._draining and not self.inbox.closed:
            # Accepted before the listener stopped, handed over after the drain began: nothing
            # is read from it, and 4001 tells the client so (a grenache client sends what it
            # wrote there to another worker), as the drain does for every socket it stops.
            _native.LoopConn(sock, self.inbox, self._weak, None).close(4001)
            return
        if self.inbox.closed or len(self._conns) >= self._max or n >= self._max_ip:
            return  # dropped: the socket closes
        lc = _native.LoopConn(sock, self.inbox, self._weak, self._arm)
        _spin_before_sleep(self._loop)
        fd = lc.fileno()
        self._conns[fd] = (lc, ip)
        self._per_ip[ip] = n + 1
        self._loop.add_reader(fd, self._readable, lc)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(max(self._idle / 4, 0.05), self._sweep)
        # The bytes that came with the handshake may hold whole requests.
        self._readable(lc)

    def _readable(self, lc: Any) -> None:
        if lc.pump(self._run):
            self._end(lc.fileno())

    def _writable(self, lc: Any) -> None:
        fd = lc.fileno()
        entry = self._conns.get(fd)
        if entry is None or entry[0] is not lc:
            return
        if not lc.writable():
            self._loop.remove_writer(fd)

    def _kick(self) -> None:
        """Called by a socket whose frames wait for the next iteration of the loop."""
        try:
            self._loop.call_soon(_native._inloop_flush)
        except RuntimeError:  # the loop is closed: write now
            _native._inloop_flush()

    def _event(self, fd: int, event: int) -> None:
        entry = self._conns.get(fd)
        if entry is None:
            return
        if event == _EV_BLOCKED:
            self._loop.add_writer(fd, self._writable, entry[0])
        else:
            self._end(fd, 4001)

    def _end(self, fd: int, code: Optional[int] = None) -> None:
        """Stops watching the socket and closes it (with a close frame ``code``, unless one was
        sent)."""
        entry = self._conns.pop(fd, None)
        if entry is None:
            return
        lc, ip = entry
        try:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        except Exception:
            pass  # the loop is closed
        lc.close(code)
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)
        if not self._conns:
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None
            if self._draining:
                for fut in self._waiters:
                    if not fut.done():
                        fut.set_result(not self._expired)
                self._waiters.clear()
                if self.inbox.finished:
                    self._stop_inbox()

    def _sweep(self) -> None:
        """Closes the sockets idle for ``ws_idle_timeout_ms`` (1000, as the core's server)."""
        self._sweeper = None
        for fd, (lc, _) in list(self._conns.items()):
            if lc.in_flight == 0 and lc.idle >= self._idle:
                self._end(fd, 1000)
        if self._conns:
            self._sweeper = self._loop.call_later(max(self._idle / 4, 0.05), self._sweep)

    def drain_requested(self) -> None:
        """From any thread, before the server's core stops: a drain is on its way to the loop.
        The core then ends the inbox, and the loop may see that end before it runs ``drain``
        (both arrive while a handler holds the loop, in either order); marked draining, the
        loop leaves the sockets open for ``drain`` instead of closing them at the inbox's end,
        and a deferred reply still goes out."""
        self._draining = True

    def drain(self, grace: float) -> "asyncio.Future[bool]":
        """On the loop: stops reading every socket, closes each once its requests are answered
        (4001) and the rest after ``grace`` seconds (1001). The future is true when every socket
        finished in time."""
        fut = self._loop.create_future()
        self._draining = True
        for fd, (lc, _) in list(self._conns.items()):
            self._loop.remove_reader(fd)
            if lc.drain():
                self._end(fd, 4001)
        if not self._conns:
            fut.set_result(not self._expired)
            return fut
        self._waiters.append(fut)

        def expire() -> None:
            if fut.done():
                return
            self._expired = True
            for fd in list(self._conns):
                self._end(fd, 1001)

        self._loop.call_later(grace, expire)
        return fut

    def _shutdown(self) -> None:
        super()._shutdown()
        # The replies of the cancelled handlers (ERR_NO_REPLY) go out before the close frame.
        for fd in list(self._conns):
            self._end(fd, 1001)


async def _drained(calls: _LoopCalls, grace: float) -> bool:
    return await calls.drain(grace)


class Server:
    """An RPC server (``transport="http"``, ``"ws"``, ``"zmq"`` or ``"utp"``) answering with
    ``handler(payload, info)``.

    The handler runs on a library thread and returns the result (any JSON value), or raises
    ``ReplyError("ERR_...")`` to answer with an error. Any other exception is printed and the
    client gets ``ERR_HANDLER_PANIC``. Plain handlers run on a pool of library threads that
    answer the queued requests in a row under one hold of the GIL; one that blocks lets another
    thread of the pool take the next requests. It may be an ``async def``: each request then
    runs as a task of the event loop that was running where the server was made (or ``loop``),
    else of an event loop on the library's own thread; requests reach the loop in batches. When
    that loop shuts down (the end of ``asyncio.run``), handlers still running are cancelled and
    requests not yet started are answered ``ERR_NO_REPLY``, so no client waits for a loop that
    is gone. Over plain WS (no TLS), an ``async def`` handler's server hands each socket, once
    upgraded, to that loop, which reads and writes it itself: a request and its reply then cross
    no thread, the requests read at once run as one batch and their replies go out in one write
    (``in_loop=False``, or ``GRENACHE_PYTHON_IN_LOOP=0`` in the environment, keeps them on the
    library's threads; see docs/compat.md for what differs). A plain handler's server over
    plain WS without ``reply_timeout`` has its sockets read by the threads that run the handler:
    the thread that finds a request runs the handler and writes the reply itself (the same
    switches turn that off). ``info.defer()`` takes the ``Reply`` to answer later. With ``reply_timeout`` (seconds), a handler that takes
    longer is answered ``ERR_TIMEOUT`` for it. Over WS, ``verify_client(fingerprint, remote_addr)``
    sees each client before its socket is accepted (``fingerprint``: the SHA-1 of its
    certificate, or ``None``) and refuses it by returning false, like the reference's
    ``verifyClient``; it runs on an I/O thread, so keep it short.

    Over uTP (one UDP socket for the service, punches and broker traffic; no TLS), ``broker``
    names a broker (``grenache broker``) that every announced name is also registered with, so
    clients behind other NATs are introduced and both sides punch; ``punch`` and ``on_punch``
    drive and watch hole punching from the server's socket.

    ``limits`` sets limits against hostile load by name (durations in milliseconds):
    ``max_connections``, ``max_connections_per_ip``, ``header_timeout_ms``, ``body_timeout_ms``,
    ``body_min_rate``, ``idle_timeout_ms``, ``max_body_in_flight``, ``ws_ping_interval_ms``,
    ``ws_pong_timeout_ms``, ``ws_idle_timeout_ms`` (the same names in every face; an unknown name
    or a zero cap raises ``InvalidArgumentError``)."""

    def __init__(
        self,
        link: Link,
        handler: Handler,
        *,
        transport: str = "http",
        port: int = 0,
        tls: Optional[ServerTls] = None,
        reply_timeout: Optional[float] = None,
        verify_client: Optional[Callable[[Optional[str], Optional[str]], bool]] = None,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        broker: Optional[str] = None,
        limits: Optional[Dict[str, int]] = None,
        in_loop: Optional[bool] = None,
    ) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop_calls: Optional[weakref.ref] = None
        if _is_async(handler):
            target = loop if loop is not None and not loop.is_closed() else _owned_loop()
            fast = transport == "ws" and tls is None and (_in_loop_default() if in_loop is None else bool(in_loop))
            if fast:
                _ms(reply_timeout)  # checked here, as on the other path
                calls: _Calls = _LoopCalls(target, handler, reply_timeout, limits)
                # Weak: only the loop holds the _LoopCalls (see _Calls).
                self._loop_calls = weakref.ref(calls)
            else:
                calls = _Calls(target, handler)
            self._s = _native.Server(link._l, transport, None, port, tls, _ms(reply_timeout), verify_client, broker, calls.inbox, limits, fast)
        else:
            fast = transport == "ws" and tls is None and reply_timeout is None and (_in_loop_default() if in_loop is None else bool(in_loop))
            self._s = _native.Server(link._l, transport, _wrap_handler(handler, loop), port, tls, _ms(reply_timeout), verify_client, broker, None, limits, fast)

    @property
    def port(self) -> int:
        return self._s.port

    def announce(self, name: str) -> None:
        """Announces once that this server serves ``name``."""
        self._s.announce(name)

    def start_announcing(self, name: str, interval: float = 1.0) -> None:
        self._s.start_announcing(name, _ms(interval))

    def stop_announcing(self, name: str) -> bool:
        return self._s.stop_announcing(name)

    def shutdown(self, grace: float = 10.0) -> bool:
        """Shuts down gracefully, for restarts without failed requests: stops announcing and
        listening (clients' connects are refused, and grenache clients send those requests to
        another worker), lets the requests already received finish and their replies go out,
        then closes; after ``grace`` seconds the rest are closed. Returns True when every
        connection finished in time. Call ``close()`` afterwards.

        An ``async def`` handler's server whose sockets its loop reads (``in_loop``) drains
        them on that loop: called from another thread, this waits for it; called on the loop's
        own thread (where its handlers cannot run while this blocks), it closes the idle
        sockets, leaves the others draining on the loop (closed when answered, or after
        ``grace``), and returns True only when none was busy: prefer ``shutdown_async`` there."""
        calls = self._loop_calls() if self._loop_calls is not None else None
        if calls is None:
            return self._s.shutdown(_ms(grace))
        loop = calls._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fut = calls.drain(grace)
            core = self._s.shutdown(_ms(grace))
            return core and fut.done() and fut.result()
        calls.drain_requested()
        try:
            cf = asyncio.run_coroutine_threadsafe(_drained(calls, grace), loop)
        except RuntimeError:  # the loop is closed: its sockets are gone
            return self._s.shutdown(_ms(grace))
        core = self._s.shutdown(_ms(grace))
        try:
            return cf.result(grace + 5) and core
        except Exception:
            return False

    def punch(self, target: str, timeout: float = 5.0) -> None:
        """uTP: punches ``target`` (``"ip:port"``) from the server's socket every 100 ms until it
        answers; raises ``PunchTimeoutError`` when nothing came back within ``timeout`` seconds
        (e.g. a symmetric NAT)."""
        self._s.punch(target, _ms(timeout))

    def on_punch(self, callback: Callable[[str], None]) -> None:
        """uTP: ``callback(from_addr)`` for every punch reaching the server's socket (on a
        library thread), until the server is closed."""
        self._s.on_punch(callback)

    async def shutdown_async(self, grace: float = 10.0) -> bool:
        """``shutdown`` for asyncio."""
        core = _await(lambda done: self._s.shutdown_cb(_ms(grace), done), json.loads)
        calls = self._loop_calls() if self._loop_calls is not None else None
        if calls is None:
            return await core
        calls.drain_requested()
        loop = calls._loop
        if asyncio.get_running_loop() is loop:
            drained = calls.drain(grace)
        else:
            try:
                drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_drained(calls, grace), loop))
            except RuntimeError:  # the loop is closed: its sockets are gone
                return await core
        ok, core_ok = await asyncio.gather(drained, core)
        return bool(ok and core_ok)

    def close(self) -> None:
        """Stops announcing and listening (connects to its port are refused once this returns)
        and closes the connections: a request still running gets no reply (its client sees the
        connection close). ``shutdown`` lets them finish first."""
        self._s.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dialed(weak: "weakref.ref", dest: str, sock: Any) -> None:
    owner = weak()
    if owner is not None:
        owner._adopt(dest, sock)


class _LoopClient:
    """The in-loop path of one ``Client``'s plain WS requests on one event loop
    (``_native.LoopClient``): the core picks the destination and dials it on its runtime, then
    this loop writes the requests and reads the replies on the socket itself (``add_reader``),
    one socket per destination for every request in flight to it. A request the loop cannot send
    (lookup not cached, socket still being dialled, dial failed) takes the core's path."""

    __slots__ = ("native", "_loop", "_weak", "_sweeper", "_thread", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: "_native.Client", inbox: "_native.Inbox") -> None:
        self._loop = loop
        self._weak = weakref.ref(self)
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._thread = threading.get_ident()
        self.native = _native.LoopClient(client, inbox, self._weak, _loads)

    # Called by the native side.

    def _dial(self, dest: str) -> None:
        self.native.dial(dest, functools.partial(self._loop.call_soon_threadsafe, _dialed, self._weak, dest))

    def _adopt(self, dest: str, sock: Any) -> None:
        fd = self.native.adopt(dest, sock)
        if fd < 0:
            return
        _spin_before_sleep(self._loop)
        try:
            self._loop.add_reader(fd, self._readable, fd)
        except Exception:
            # A loop that cannot watch sockets (no add_reader): its requests keep the core's path.
            self.close("ERR_TRANSPORT_CLOSE", "ERR_TRANSPORT_CLOSE: the event loop cannot watch sockets")
            return
        # The bytes that came with the handshake may hold frames.
        self._readable(fd)

    def _kick(self) -> None:
        self._loop.call_soon(self.native.flush)

    def _watch(self, fd: int) -> None:
        self._loop.add_writer(fd, self._writable, fd)

    def _arm(self, delay: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = self._loop.call_later(delay, self._sweep)

    # Loop callbacks.

    def _readable(self, fd: int) -> None:
        if self.native.pump(fd):
            self._end(fd)

    def _writable(self, fd: int) -> None:
        if not self.native.writable(fd):
            self._loop.remove_writer(fd)

    def _sweep(self) -> None:
        self._sweeper = None
        delay, ended = self.native.sweep()
        for fd in ended:
            self._end(fd)
        if delay is not None:
            self._sweeper = self._loop.call_later(delay, self._sweep)

    def _end(self, fd: int) -> None:
        try:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        except Exception:
            pass  # the loop is closed
        self.native.close(fd)

    def close(self, kind: str, message: str) -> None:
        """On the loop's thread: fails what is in flight (``kind``, ``message``; dropped when the
        loop is closed: nothing can wait for it any more) and closes the sockets."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for fd in self.native.shutdown():
            try:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
            except Exception:
                pass  # the loop is closed
        self.native.finish(None if self._loop.is_closed() else kind, message)


def _close_loop_clients(lcs: "weakref.WeakSet[_LoopClient]") -> None:
    """Fails what is in flight on the loops' sockets of a client (``CancelledError``, as the
    core's path) and closes them, each on its loop's thread."""
    kind, msg = "ERR_CANCELLED", "the operation was cancelled: the client was closed"
    for lc in list(lcs):
        if lc._thread == threading.get_ident() or lc._loop.is_closed():
            lc.close(kind, msg)
        else:
            try:
                lc._loop.call_soon_threadsafe(lc.close, kind, msg)
            except RuntimeError:  # closed meanwhile
                lc.close(kind, msg)


class Client:
    """An RPC client: ``request`` asks one worker of a service, ``map`` asks all of them.

    Over plain WS (``transport="ws"``, no ``tls``), ``request_async`` writes its requests and
    reads their replies on the caller's event loop, one socket per worker shared by every request
    in flight to it (``in_loop=False``, or ``GRENACHE_PYTHON_IN_LOOP=0``, keeps them on the
    library's threads). The core still looks the worker up and chooses it; the first requests to
    a worker, and those whose lookup is not cached, go through the library's threads while the
    loop's socket is dialled.

    Over uTP with ``broker``, the workers are found through that broker (their external
    endpoints behind NATs) and punched (both sides at once, at most ``punch_timeout`` seconds;
    ``PunchTimeoutError`` when none could be) before the requests go to them."""

    def __init__(
        self,
        link: Link,
        *,
        transport: str = "http",
        tls: Optional[ClientTls] = None,
        timeout: Optional[float] = None,
        broker: Optional[str] = None,
        punch_timeout: Optional[float] = None,
        in_loop: Optional[bool] = None,
    ) -> None:
        self._c = _native.Client(link._l, transport, tls, _ms(timeout), broker, _ms(punch_timeout))
        # Plain WS requests of ``request_async`` are sent and read on the caller's event loop
        # (``in_loop``; ``GRENACHE_PYTHON_IN_LOOP=0`` turns it off): loop -> _LoopClient.
        self._in_loop = transport == "ws" and tls is None and broker is None and (_in_loop_default() if in_loop is None else bool(in_loop))
        self._loop_clients: "weakref.WeakSet[_LoopClient]" = weakref.WeakSet()
        # The last loop used and its _LoopClient (weak references: a loop is not kept alive).
        self._last: Optional[tuple] = None
        self._closed = False
        # A client dropped without close() closes its loops' sockets too.
        weakref.finalize(self, _close_loop_clients, self._loop_clients)

    def request(self, name: str, payload: Json, *, timeout: Optional[float] = None, retry: int = 0, compress: bool = False, dest: Optional[str] = None) -> Json:
        """Sends ``payload`` to one worker of ``name`` and returns its result. ``retry`` more
        attempts go to other workers when the first fails to deliver; ``dest`` (``"host:port"``)
        skips the lookup."""
        return json.loads(self._c.request(name, _dumps(payload), _ms(timeout), retry, compress, dest))

    async def request_async(self, name: str, payload: Json, *, timeout: Optional[float] = None, retry: int = 0, compress: bool = False, dest: Optional[str] = None) -> Json:
        """``request`` for asyncio. Over plain WS (``in_loop``), with ``retry`` at most 1, the
        request is written and its reply read on this event loop once the lookup of ``name``
        is cached and a socket to the chosen worker is open; the first requests to a worker
        take the library's threads while that socket is dialled."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        text = _dumps(payload)
        ms = None if timeout is None else _ms(timeout)
        if self._in_loop and retry <= 1:
            last = self._last
            lc = last[1]() if last is not None and last[0]() is loop else None
            if lc is None:
                lc = self._loop_client(loop)
            if lc is not None and lc.native.request(name, text, fut, ms, dest):
                return await fut
        self._c.request_in(name, text, _results(loop).inbox, fut, ms, retry, compress, dest)
        return await fut

    def _loop_client(self, loop: asyncio.AbstractEventLoop) -> Optional[_LoopClient]:
        """This client's in-loop state on ``loop``, made on first use (None once closed)."""
        if self._closed:
            return None
        box = _results(loop)
        if box.clients is None:
            box.clients = weakref.WeakKeyDictionary()
        lc = box.clients.get(self)
        if lc is None:
            lc = _LoopClient(loop, self._c, box.inbox)
            box.clients[self] = lc
            self._loop_clients.add(lc)
        self._last = (weakref.ref(loop), weakref.ref(lc))
        return lc

    def map(self, name: str, payload: Json, *, timeout: Optional[float] = None, compress: bool = False, limit: int = 0) -> List[Json]:
        """Sends ``payload`` to every worker of ``name`` (at most ``limit`` when set) and returns
        their results."""
        return json.loads(self._c.map(name, _dumps(payload), _ms(timeout), compress, limit))

    async def map_async(self, name: str, payload: Json, *, timeout: Optional[float] = None, compress: bool = False, limit: int = 0) -> List[Json]:
        text = _dumps(payload)
        return await _call(asyncio.get_running_loop(), lambda inbox, token: self._c.map_in(name, text, inbox, token, _ms(timeout), compress, limit))

    def close(self) -> None:
        """Cancels requests in flight (``CancelledError``) and closes connections."""
        self._closed = True
        self._last = None
        _close_loop_clients(self._loop_clients)
        self._c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# PUB/SUB


class Publisher:
    """A PUB/SUB publisher (WebSocket, like grenache-nodejs-ws's PeerPub, or ``transport="zmq"``:
    a ZeroMQ PUB socket). A subscriber that
    cannot keep up loses its oldest queued messages rather than growing the publisher's memory."""

    def __init__(self, link: Link, *, port: int = 0, tls: Optional[ServerTls] = None, transport: str = "ws") -> None:
        self._p = _native.Publisher(link._l, port, tls, transport)

    @property
    def port(self) -> int:
        return self._p.port

    def start_announcing(self, name: str, interval: float = 1.0) -> None:
        """Announces the channel ``name`` every ``interval`` seconds."""
        self._p.start_announcing(name, _ms(interval))

    def publish(self, message: Union[str, Json]) -> int:
        """Sends ``message`` (a ``str`` as it is, anything else as JSON) to every subscriber;
        returns how many it was queued for."""
        return self._p.publish(message if isinstance(message, str) else _dumps(message))

    @property
    def subscribers(self) -> int:
        return self._p.subscribers

    def close(self) -> None:
        self._p.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """Subscribes to every publisher of ``name`` and calls ``on_message(message, publisher)``
    for each message, one at a time, on a library thread (``message`` is ``str``, or ``bytes``
    for binary frames). Reconnects when publishers go away and come back."""

    def __init__(self, link: Link, name: str, on_message: Callable[[Union[str, bytes], str], None], *, tls: Optional[ClientTls] = None, transport: str = "ws") -> None:
        def call(publisher: str, data: Union[str, bytes], binary: bool) -> None:
            on_message(data, publisher)

        self._s = _native.Subscriber(link._l, name, call, tls, transport)

    @property
    def publishers(self) -> int:
        """How many publishers are connected (updated every 200 ms)."""
        return self._s.publishers

    def close(self) -> None:
        """Stops the subscription: once it returns, ``on_message`` is not running (unless this
        is called from inside it) and will not run again."""
        self._s.close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
