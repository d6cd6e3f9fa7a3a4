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
finishes in the background). Request handlers and subscription callbacks run on library
threads, never on the caller's; a handler may block (it runs on a pool of its own). Every
``*_async`` method is a coroutine for asyncio.

Payloads are any JSON-serialisable Python value (``json.dumps``/``json.loads``); they travel as
JSON, like the reference's.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Union

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
    "ReplyError",
    "GrenacheError",
    "TimeoutError",
    "LookupEmptyError",
    "RemoteError",
    "ConnectError",
    "PunchTimeoutError",
    "TransportClosedError",
    "InvalidArgumentError",
    "TlsError",
    "DhtError",
    "SeqTooLowError",
    "CasMismatchError",
    "CancelledError",
    "version",
]

Json = Any
"""Any JSON-serialisable value."""

# ---------------------------------------------------------------------------------------------
# Errors


class GrenacheError(Exception):
    """An error of the library: ``code`` (a stable integer), ``name`` (``"ERR_TIMEOUT"``...) and
    ``message``. The subclasses below group the codes a caller usually tells apart."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message and message != name else name)
        self.code = code
        self.name = name
        self.message = message


class TimeoutError(GrenacheError, builtins.TimeoutError):
    """A request or DHT operation did not complete in time (``ERR_TIMEOUT``)."""


class LookupEmptyError(GrenacheError, LookupError):
    """Nobody announces the service (``ERR_GRAPE_LOOKUP_EMPTY``)."""


class RemoteError(GrenacheError):
    """The remote handler answered an error; ``message`` is its text (e.g. ``"ERR_BUSY"``)."""


class ConnectError(GrenacheError, ConnectionError):
    """The destination could not be reached (``ERR_CONNECT``, ``ERR_IO``)."""


class TransportClosedError(GrenacheError, ConnectionError):
    """The connection closed with the request in flight (``ERR_TRANSPORT_CLOSE``)."""


class InvalidArgumentError(GrenacheError, ValueError):
    """A bad argument: invalid JSON, an unknown transport, a malformed hash... """


class TlsError(GrenacheError):
    """A certificate could not be used, or a TLS handshake or client check failed."""


class DhtError(GrenacheError):
    """The DHT refused or could not complete an operation."""


class SeqTooLowError(DhtError):
    """A mutable put with a sequence number lower than the stored one (BEP44 error 302)."""


class CasMismatchError(DhtError):
    """A mutable put whose ``cas`` does not match the stored sequence number (BEP44 error 301)."""


class PunchTimeoutError(ConnectError):
    """Hole punching found no open path to the peer in time (``ERR_PUNCH_TIMEOUT``): a NAT
    that maps every destination to a new port (symmetric), or a peer that does not punch back."""


class CancelledError(GrenacheError):
    """The operation was cancelled because its object was closed first."""


_BY_NAME = {
    "ERR_TIMEOUT": TimeoutError,
    "ERR_GRAPE_LOOKUP_EMPTY": LookupEmptyError,
    "ERR_REMOTE": RemoteError,
    "ERR_CONNECT": ConnectError,
    "ERR_IO": ConnectError,
    "ERR_PUNCH_TIMEOUT": PunchTimeoutError,
    "ERR_TRANSPORT_CLOSE": TransportClosedError,
    "ERR_INVALID_ARGUMENT": InvalidArgumentError,
    "ERR_INVALID_UTF8": InvalidArgumentError,
    "ERR_NULL_PARAMETER": InvalidArgumentError,
    "ERR_TLS_HANDSHAKE": TlsError,
    "ERR_CERTIFICATE": TlsError,
    "ERR_TLS_CONFIG": TlsError,
    "ERR_CLIENT_REFUSED": TlsError,
    "ERR_NO_NODES": DhtError,
    "ERR_ALL_QUERIES_FAILED": DhtError,
    "ERR_DHT": DhtError,
    "ERR_GRAPE": DhtError,
    "ERR_SEQ_TOO_LOW": SeqTooLowError,
    "ERR_CAS_MISMATCH": CasMismatchError,
    "ERR_CANCELLED": CancelledError,
}


def _make_error(code: int, name: str, message: str) -> GrenacheError:
    return _BY_NAME.get(name, GrenacheError)(code, name, message)


_native._set_error_factory(_make_error)


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


def _ms(seconds: Optional[float]) -> Optional[int]:
    if seconds is None:
        return None
    if seconds < 0:
        raise InvalidArgumentError(0, "ERR_INVALID_ARGUMENT", "a duration cannot be negative")
    return int(seconds * 1000)


def _dumps(value: Json) -> str:
    return json.dumps(value, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Grape and Link


class Grape:
    """A Grape (DHT node + HTTP API) running in this process, started by the constructor.

    ``dht_port``/``api_port`` 0 pick free ports; ``bootstrap`` lists other Grapes' DHT
    addresses (``"127.0.0.1:20001"``). Stop it with ``stop()`` or a ``with`` block."""

    def __init__(self, dht_port: int = 0, api_port: int = 0, bootstrap: Sequence[str] = (), host: Optional[str] = None) -> None:
        self._g = _native.Grape(dht_port, api_port, list(bootstrap), host)

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


@dataclass(frozen=True)
class RequestInfo:
    """What a handler knows about a request besides its payload."""

    fingerprint: Optional[str]
    """The client certificate's SHA-1 fingerprint (``"AA:BB:..."``) over TLS with a client
    certificate, else ``None``."""


Handler = Callable[[Json, RequestInfo], Json]


def _wrap_handler(handler: Handler) -> Callable[[str, Optional[str]], tuple]:
    def call(payload_json: str, fingerprint: Optional[str]) -> tuple:
        try:
            result = handler(json.loads(payload_json), RequestInfo(fingerprint))
        except ReplyError as e:
            return (str(e) or "ERR_REPLY", None)
        return (None, _dumps(result))

    return call


class Server:
    """An RPC server (``transport="http"``, ``"ws"`` or ``"utp"``) answering with
    ``handler(payload, info)``.

    The handler runs on a library thread and returns the result (any JSON value), or raises
    ``ReplyError("ERR_...")`` to answer with an error. Any other exception is printed and the
    client gets ``ERR_HANDLER_PANIC``. With ``reply_timeout`` (seconds), a handler that takes
    longer is answered ``ERR_TIMEOUT`` for it. Over WS, ``verify_client(fingerprint, remote_addr)``
    sees each client before its socket is accepted (``fingerprint``: the SHA-1 of its
    certificate, or ``None``) and refuses it by returning false, like the reference's
    ``verifyClient``; it runs on an I/O thread, so keep it short.

    Over uTP (one UDP socket for the service, punches and broker traffic; no TLS), ``broker``
    names a broker (``grenache broker``) that every announced name is also registered with, so
    clients behind other NATs are introduced and both sides punch; ``punch`` and ``on_punch``
    drive and watch hole punching from the server's socket."""

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
        broker: Optional[str] = None,
    ) -> None:
        self._s = _native.Server(link._l, transport, _wrap_handler(handler), port, tls, _ms(reply_timeout), verify_client, broker)

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
        connection finished in time. Call ``close()`` afterwards."""
        return self._s.shutdown(_ms(grace))

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
        return await _await(lambda done: self._s.shutdown_cb(_ms(grace), done), lambda r: r == "true")

    def close(self) -> None:
        """Stops announcing and listening; requests in flight still get their reply."""
        self._s.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """An RPC client: ``request`` asks one worker of a service, ``map`` asks all of them.

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
    ) -> None:
        self._c = _native.Client(link._l, transport, tls, _ms(timeout), broker, _ms(punch_timeout))

    def request(self, name: str, payload: Json, *, timeout: Optional[float] = None, retry: int = 0, compress: bool = False, dest: Optional[str] = None) -> Json:
        """Sends ``payload`` to one worker of ``name`` and returns its result. ``retry`` more
        attempts go to other workers when the first fails to deliver; ``dest`` (``"host:port"``)
        skips the lookup."""
        return json.loads(self._c.request(name, _dumps(payload), _ms(timeout), retry, compress, dest))

    async def request_async(self, name: str, payload: Json, *, timeout: Optional[float] = None, retry: int = 0, compress: bool = False, dest: Optional[str] = None) -> Json:
        text = _dumps(payload)
        return await _await(lambda done: self._c.request_cb(name, text, done, _ms(timeout), retry, compress, dest), json.loads)

    def map(self, name: str, payload: Json, *, timeout: Optional[float] = None, compress: bool = False, limit: int = 0) -> List[Json]:
        """Sends ``payload`` to every worker of ``name`` (at most ``limit`` when set) and returns
        their results."""
        return json.loads(self._c.map(name, _dumps(payload), _ms(timeout), compress, limit))

    async def map_async(self, name: str, payload: Json, *, timeout: Optional[float] = None, compress: bool = False, limit: int = 0) -> List[Json]:
        text = _dumps(payload)
        return await _await(lambda done: self._c.map_cb(name, text, done, _ms(timeout), compress, limit), json.loads)

    def close(self) -> None:
        """Cancels requests in flight (``CancelledError``) and closes connections."""
        self._c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# PUB/SUB


class Publisher:
    """A PUB/SUB publisher (WebSocket, like grenache-nodejs-ws's PeerPub). A subscriber that
    cannot keep up loses its oldest queued messages rather than growing the publisher's memory."""

    def __init__(self, link: Link, *, port: int = 0, tls: Optional[ServerTls] = None) -> None:
        self._p = _native.Publisher(link._l, port, tls)

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

    def __init__(self, link: Link, name: str, on_message: Callable[[Union[str, bytes], str], None], *, tls: Optional[ClientTls] = None) -> None:
        def call(publisher: str, data: Union[str, bytes], binary: bool) -> None:
            on_message(data, publisher)

        self._s = _native.Subscriber(link._l, name, call, tls)

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
