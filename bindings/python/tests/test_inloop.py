"""Tests of the in-loop path of ``async def`` handlers over plain WS: the server hands each socket
to the handler's event loop, which reads and writes it itself. Real Grapes, servers, clients (the
library's and the Node reference's from tests/interop) and raw sockets on loopback (free ports).

Run: python -m unittest discover -s bindings/python/tests -v   (after `maturin develop`)
"""

import asyncio
import base64
import contextvars
import json
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import unittest

import grenache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_grenache import STARTED, Network, NodeProcess, eventually, new_mark, note_started, wait_started


async def echo(payload, info):
    note_started(payload)
    if isinstance(payload, dict):
        if payload.get("sleep"):
            await asyncio.sleep(payload["sleep"])
        elif payload.get("yield"):
            await asyncio.sleep(0)
    return payload


def in_loop(server):
    return server._loop_calls is not None and server._loop_calls() is not None


# ---------------------------------------------------------------------------------------------
# A raw WebSocket client, to send what no well-behaved client sends.


def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise AssertionError("closed during the handshake")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return RawWs(s, rest)


def frame(opcode, payload, mask=True, length=None):
    n = len(payload) if length is None else length
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([0x80 | opcode, m | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, m | 127]) + struct.pack(">Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


class RawWs:
    def __init__(self, sock, rest):
        self.s = sock
        self.buf = rest

    def send_text(self, text):
        self.s.sendall(frame(1, text.encode()))

    def next_frame(self, timeout=10):
        """(opcode, payload) of the next frame from the server; None when the socket closed."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                n = self.buf[1] & 0x7F
                at = 2
                if n == 126:
                    n, at = struct.unpack(">H", self.buf[2:4])[0], 4
                elif n == 127:
                    n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
                if len(self.buf) >= at + n:
                    op, payload = self.buf[0] & 0x0F, self.buf[at : at + n]
                    self.buf = self.buf[at + n :]
                    return op, payload
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def close_code(self, timeout=10):
        """The code of the server's close frame (skipping other frames)."""
        while True:
            f = self.next_frame(timeout)
            if f is None:
                return None
            if f[0] == 8:
                return struct.unpack(">H", f[1][:2])[0] if len(f[1]) >= 2 else 1005

    def request(self, rid, payload, timeout=10):
        self.send_text(json.dumps([rid, "x", payload]))
        while True:
            f = self.next_frame(timeout)
            if f is None:
                raise AssertionError("closed")
            if f[0] == 1:
                return json.loads(f[1])

    def close(self):
        self.s.close()


def check_bad_frames(tc, port, between=lambda code: None):
    """On a server at ``port``: a peer that sends an unmasked frame (1002), invalid UTF-8 (1007)
    or a message over the size limit (1009) is closed with that code, while another socket is
    served (``between(code)`` checks more after each); on that socket a request that is not JSON
    is dropped and the socket goes on, and a ping is answered with a pong carrying its bytes.
    Returns that socket, open."""
    good = ws_connect(port)
    tc.assertEqual(good.request("r0", "hi"), ["r0", None, "hi"])
    bad_frames = [
        (frame(1, b'["r","x",1]', mask=False), 1002),
        (frame(1, b'["r","x","\xff\xfe"]'), 1007),
        (frame(1, b"", length=17 << 20), 1009),
    ]
    for data, code in bad_frames:
        with tc.subTest(code=code):
            bad = ws_connect(port)
            bad.s.sendall(data)
            tc.assertEqual(bad.close_code(), code)
            tc.assertIsNone(bad.next_frame(), "the server closed the socket")
            bad.close()
            tc.assertEqual(good.request(f"r{code}", code), [f"r{code}", None, code])
            between(code)
    good.send_text("{nope")
    good.send_text("42")
    tc.assertEqual(good.request({"rid": 1}, [1, 2]), [{"rid": 1}, None, [1, 2]])
    good.s.sendall(frame(9, b"ping!"))
    tc.assertEqual(good.next_frame(), (10, b"ping!"))
    return good


class InLoopTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.net = Network()
        cls.client = grenache.Client(cls.net.l2, transport="ws")

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.net.stop()

    def dest(self, s):
        return f"127.0.0.1:{s.port}"

    def test_the_path_is_taken_where_it_applies(self):
        """Plain WS with an ``async def`` handler: in the loop; HTTP, TLS, plain handlers,
        ``in_loop=False`` and GRENACHE_PYTHON_IN_LOOP=0: the threaded path."""
        cases = [
            (dict(transport="ws"), echo, True),
            (dict(transport="ws", in_loop=False), echo, False),
            (dict(transport="http"), echo, False),
            (dict(transport="ws"), lambda p, info: p, False),
        ]
        for kwargs, handler, want in cases:
            with self.subTest(kwargs=kwargs, plain=handler is not echo):
                with grenache.Server(self.net.l1, handler, **kwargs) as s, grenache.Client(self.net.l2, transport=kwargs["transport"]) as c:
                    self.assertEqual(s._loop_calls is not None, want)
                    self.assertEqual(c.request("x", {"v": 1}, dest=self.dest(s), timeout=10), {"v": 1})
        script = textwrap.dedent(
            """
            import asyncio, grenache
            async def h(p, info):
                return p
            with grenache.Grape(host="127.0.0.1") as g, grenache.Link(g.url) as link:
                s = grenache.Server(link, h, transport="ws")
                c = grenache.Client(link, transport="ws")
                assert c.request("x", 5, dest=f"127.0.0.1:{s.port}", timeout=10) == 5
                print("in_loop", s._loop_calls is not None, flush=True)
                c.close(); s.close()
            """
        )
        env = dict(os.environ, GRENACHE_PYTHON_IN_LOOP="0")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(out.stdout.strip(), "in_loop False", out.stderr[-2000:])

    def test_order_per_request_and_many_in_flight(self):
        """Thousands of requests in flight over several sockets, some answered at once, some
        after a wait of their own: each caller gets its own request's reply, and sequential
        chains see their replies in order."""
        s = grenache.Server(self.net.l1, echo, transport="ws")
        clients = [grenache.Client(self.net.l2, transport="ws") for _ in range(3)]
        try:
            self.assertTrue(in_loop(s))
            dest = self.dest(s)
            rng = random.Random(7)

            async def main():
                payloads = [{"i": i, "yield": i % 3 == 0, "sleep": rng.choice([0, 0, 0, 0.001, 0.02])} for i in range(3000)]
                got = await asyncio.gather(*[clients[i % 3].request_async("x", p, dest=dest, timeout=30) for i, p in enumerate(payloads)])
                self.assertEqual(got, payloads)

                async def chain(k):
                    seen = []
                    for j in range(50):
                        seen.append((await clients[k % 3].request_async("x", [k, j], dest=dest, timeout=30))[1])
                    return k, seen

                for k, seen in await asyncio.gather(*[chain(k) for k in range(30)]):
                    self.assertEqual(seen, list(range(50)), f"chain {k}")

            asyncio.run(main())
            # Blocking callers on threads, interleaved with the asyncio ones above.
            results = {}

            def call(i):
                results[i] = clients[i % 3].request("x", {"t": i}, dest=dest, timeout=30)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            self.assertEqual(results, {i: {"t": i} for i in range(40)})
        finally:
            for c in clients:
                c.close()
            s.close()

    def test_errors_defer_and_reply_timeout(self):
        """ReplyError, handler exceptions, results that are not JSON, ``info.defer()`` answered
        later from the loop and from another thread, a second answer, and ``reply_timeout``."""
        answers = {}

        async def handler(payload, info):
            kind = payload["kind"]
            if kind == "reply_error":
                raise grenache.ReplyError("ERR_MINE")
            if kind == "bug":
                raise RuntimeError("a bug in the handler")
            if kind == "not_json":
                return object()
            if kind == "defer_loop":
                reply = info.defer()
                asyncio.get_running_loop().call_later(0.05, reply.send, {"later": "loop"})
                return "ignored"
            if kind == "defer_thread":
                reply = info.defer()

                def answer():
                    reply.send({"later": "thread"})
                    try:
                        reply.send("twice")
                    except grenache.AlreadyUsedError:
                        answers["second"] = "refused"

                threading.Timer(0.05, answer).start()
                return None
            if kind == "abandon":
                info.defer().abandon()
                return None
            if kind == "slow":
                await asyncio.sleep(2)
                return "too late"
            return payload

        s = grenache.Server(self.net.l1, handler, transport="ws", reply_timeout=0.3)
        try:
            self.assertTrue(in_loop(s))
            c, dest = self.client, self.dest(s)
            ask = lambda kind: c.request("x", {"kind": kind}, dest=dest, timeout=10)  # noqa: E731
            with self.assertRaises(grenache.RemoteError) as e:
                ask("reply_error")
            self.assertEqual(e.exception.message, "ERR_MINE")
            for kind in ("bug", "not_json"):
                with self.assertRaises(grenache.RemoteError) as e:
                    ask(kind)
                self.assertEqual(e.exception.message, "ERR_HANDLER_PANIC", kind)
            self.assertEqual(ask("defer_loop"), {"later": "loop"})
            self.assertEqual(ask("defer_thread"), {"later": "thread"})
            eventually(lambda: answers.get("second") == "refused", what="a second answer refused")
            with self.assertRaises(grenache.RemoteError) as e:
                ask("abandon")
            self.assertEqual(e.exception.message, "ERR_NO_REPLY")
            t0 = time.monotonic()
            with self.assertRaises(grenache.RemoteError) as e:
                ask("slow")
            self.assertEqual(e.exception.message, "ERR_TIMEOUT")
            self.assertLess(time.monotonic() - t0, 1.8)
            # The socket still serves after all of that.
            self.assertEqual(ask("echo"), {"kind": "echo"})
        finally:
            s.close()

    def test_malformed_and_oversized_frames_close_only_their_socket(self):
        """A peer that sends an unmasked frame (1002), invalid UTF-8 (1007) or a message over
        the size limit (1009) is closed with that code; a request that is not JSON is dropped
        and the socket stays; other clients are served throughout."""
        s = grenache.Server(self.net.l1, echo, transport="ws")
        try:
            self.assertTrue(in_loop(s))
            good = check_bad_frames(self, s.port, lambda code: self.assertEqual(self.client.request("x", code, dest=self.dest(s), timeout=10), code))
            # The pong does not wait for the reply of a request that runs long either.
            good.s.sendall(frame(1, json.dumps(["slow", "x", {"sleep": 1.5}]).encode()) + frame(9, b"again"))
            t0 = time.monotonic()
            self.assertEqual(good.next_frame(), (10, b"again"))
            self.assertLess(time.monotonic() - t0, 1.0)
            op, body = good.next_frame()
            self.assertEqual((op, json.loads(body)), (1, ["slow", None, {"sleep": 1.5}]))
            good.s.sendall(frame(8, struct.pack(">H", 1000)))
            self.assertEqual(good.close_code(), 1000)
            good.close()
        finally:
            s.close()

    def test_a_peer_that_does_not_read_is_closed(self):
        """A peer that sends requests and never reads the replies is closed once 64 MiB of
        replies wait for it; other clients are served meanwhile."""
        s = grenache.Server(self.net.l1, echo, transport="ws")
        try:
            hog = ws_connect(s.port)
            hog.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            big = "x" * (1 << 20)
            ended = False
            try:
                for i in range(100):
                    hog.s.sendall(frame(1, json.dumps([f"r{i}", "x", big]).encode()))
                    if i % 10 == 0:
                        self.assertEqual(self.client.request("x", i, dest=self.dest(s), timeout=10), i)
            except OSError:
                ended = True  # closed while we were still sending
            hog.s.settimeout(20)
            try:
                while hog.s.recv(1 << 20):
                    pass
                ended = True
            except ConnectionResetError:
                ended = True
            self.assertTrue(ended)
            hog.close()
            self.assertEqual(self.client.request("x", "still", dest=self.dest(s), timeout=10), "still")
        finally:
            s.close()

    def test_close_closes_the_loop_sockets(self):
        """``close()`` stops listening and closes the sockets the loop holds with 1001 (as the
        core's WS server closes its own); a reply given afterwards is dropped quietly."""
        later = []

        async def handler(payload, info):
            if payload == "keep":
                later.append(info.defer())
                return None
            return payload

        s = grenache.Server(self.net.l1, handler, transport="ws")
        raw = ws_connect(s.port)
        self.assertEqual(raw.request("a", 1), ["a", None, 1])
        raw.send_text(json.dumps(["b", "x", "keep"]))
        eventually(lambda: later, what="the deferred request")
        s.close()
        self.assertEqual(raw.close_code(), 1001)
        raw.close()
        later[0].send("too late")  # nobody waits: no error
        self.assertTrue(later[0].closed)
        with self.assertRaises(grenache.ConnectError):
            self.client.request("x", 1, dest=self.dest(s), timeout=5)

    def test_limits_connections_and_idle(self):
        """``max_connections_per_ip`` closes the sockets over it at once; ``ws_idle_timeout_ms``
        closes a socket that sends nothing (1000)."""
        s = grenache.Server(self.net.l1, echo, transport="ws", limits={"max_connections_per_ip": 2, "ws_idle_timeout_ms": 400})
        try:
            a, b = ws_connect(s.port), ws_connect(s.port)
            self.assertEqual(a.request("a", 1), ["a", None, 1])
            self.assertEqual(b.request("b", 2), ["b", None, 2])
            c = ws_connect(s.port)
            self.assertIsNone(c.next_frame(), "the third socket of one IP is closed")
            c.close()
            t0 = time.monotonic()
            self.assertEqual(a.close_code(timeout=10), 1000)
            self.assertGreater(time.monotonic() - t0, 0.1)
            a.close()
            b.close()
        finally:
            s.close()

    def test_graceful_shutdown_drains_the_loop_sockets(self):
        """A request running when the server shuts down is answered, then its socket closes
        (4001) and new connects are refused; a request that outlives the grace is cut off and
        shutdown says so; from the loop itself too (shutdown_async)."""
        c = grenache.Client(self.net.l2, transport="ws")
        try:
            s = grenache.Server(self.net.l1, echo, transport="ws")
            dest = self.dest(s)
            self.assertEqual(c.request("x", 1, dest=dest, timeout=10), 1)
            got = []
            mark = new_mark()
            th = threading.Thread(target=lambda: got.append(c.request("x", {"sleep": 0.4, "v": 7, "mark": mark}, dest=dest, timeout=10)))
            th.start()
            wait_started(mark)
            self.assertTrue(s.shutdown(grace=5))
            th.join(5)
            self.assertEqual(got, [{"sleep": 0.4, "v": 7, "mark": mark}])
            with self.assertRaises(grenache.ConnectError):
                c.request("x", "hello", dest=dest, timeout=10)
            s.close()

            # A reply deferred to another thread, given after the listener stopped: it reaches
            # the loop and the socket, well before the grace ends.
            running = threading.Event()

            async def deferring(payload, info):
                reply = info.defer()
                running.set()
                threading.Timer(0.4, reply.send, args=(payload,)).start()

            s = grenache.Server(self.net.l1, deferring, transport="ws")
            dest = self.dest(s)
            got = []
            th = threading.Thread(target=lambda: got.append(c.request("x", "later", dest=dest, timeout=10)))
            th.start()
            self.assertTrue(running.wait(20), "the handler never ran")
            t0 = time.monotonic()
            self.assertTrue(s.shutdown(grace=5))
            self.assertLess(time.monotonic() - t0, 3)
            th.join(5)
            self.assertEqual(got, ["later"])
            s.close()

            raw_holder = {}

            async def main():
                s = grenache.Server(self.net.l1, echo, transport="ws")
                raw = await asyncio.get_running_loop().run_in_executor(None, ws_connect, s.port)
                raw_holder["raw"] = raw
                mark = new_mark()
                raw.send_text(json.dumps(["long", "x", {"sleep": 3, "mark": mark}]))
                deadline = time.monotonic() + 20
                while mark not in STARTED:  # the handler runs on this loop
                    self.assertLess(time.monotonic(), deadline, "the handler never ran")
                    await asyncio.sleep(0.01)
                t0 = time.monotonic()
                self.assertFalse(await s.shutdown_async(grace=0.2))
                self.assertLess(time.monotonic() - t0, 2)
                s.close()

            asyncio.run(main())
            self.assertEqual(raw_holder["raw"].close_code(), 1001)
            raw_holder["raw"].close()
        finally:
            c.close()

    def test_shutdown_while_the_loop_is_busy_keeps_a_deferred_reply(self):
        """``shutdown`` called from another thread while a handler holds the loop: the drain it
        asks for and the end of the server's inbox reach the loop together, in either order. The
        reply the handler defers still goes out, then the socket closes (4001), and shutdown
        reports every request answered; a socket upgraded meanwhile, handed to the loop after the
        drain began, is closed unread with 4001."""
        c = grenache.Client(self.net.l2, transport="ws")
        try:
            for hold in (0.3, 0.0):
                running = threading.Event()

                async def deferring(payload, info):
                    reply = info.defer()
                    running.set()
                    time.sleep(hold)  # holds the loop while shutdown is called
                    threading.Timer(0.3, reply.send, args=(payload,)).start()

                s = grenache.Server(self.net.l1, deferring, transport="ws")
                self.assertTrue(in_loop(s))
                dest = self.dest(s)
                got = []
                th = threading.Thread(target=lambda: got.append(c.request("x", "later", dest=dest, timeout=10)))
                th.start()
                self.assertTrue(running.wait(20), "the handler never ran")
                # While the loop is held, a socket the core upgrades waits for the loop: handed
                # over after the drain began, it is closed unread with 4001, not dropped.
                late = ws_connect(s.port) if hold else None
                self.assertTrue(s.shutdown(grace=5))
                th.join(10)
                self.assertEqual(got, ["later"], f"hold {hold}")
                if late is not None:
                    self.assertEqual(late.close_code(), 4001)
                    late.close()
                s.close()
        finally:
            c.close()

    def test_loop_shut_down_with_requests_running_answers_no_reply(self):
        """The loop of an in-loop server ends with requests running on several sockets: every
        client gets ERR_NO_REPLY at once (none waits for its timeout), and a request sent
        afterwards gets it too."""
        holder = {"ready": threading.Event(), "stop": None}

        async def server_main():
            holder["server"] = grenache.Server(self.net.l1, echo, transport="ws")
            stop = asyncio.Event()
            holder["stop"] = (asyncio.get_running_loop(), stop)
            holder["ready"].set()
            await stop.wait()

        runner = threading.Thread(target=lambda: asyncio.run(server_main()))
        runner.start()
        clients = [grenache.Client(self.net.l2, transport="ws") for _ in range(3)]
        try:
            self.assertTrue(holder["ready"].wait(20))
            self.assertTrue(in_loop(holder["server"]))
            dest = self.dest(holder["server"])
            results = {}

            def call(i):
                try:
                    results[i] = clients[i % 3].request("x", {"sleep": 60, "i": i}, dest=dest, timeout=30)
                except Exception as e:
                    results[i] = e

            threads = [threading.Thread(target=call, args=(i,)) for i in range(30)]
            for th in threads:
                th.start()
            time.sleep(0.5)
            t0 = time.monotonic()
            loop, stop = holder["stop"]
            loop.call_soon_threadsafe(stop.set)
            runner.join(20)
            for th in threads:
                th.join(20)
            self.assertLess(time.monotonic() - t0, 10)
            self.assertEqual(sorted(results), list(range(30)))
            for i, r in results.items():
                self.assertIsInstance(r, grenache.RemoteError, f"request {i}: {r!r}")
                self.assertEqual(r.message, "ERR_NO_REPLY", f"request {i}")

            def late():
                # The loop closed the clients' sockets (1001) right behind their replies: a
                # request written before the client read that close fails ClosedError; sent
                # again, on a new socket, it is answered.
                try:
                    return clients[0].request("x", "late", dest=dest, timeout=30)
                except grenache.ClosedError:
                    return clients[0].request("x", "late", dest=dest, timeout=30)

            with self.assertRaises(grenache.RemoteError) as e:
                late()
            self.assertEqual(e.exception.message, "ERR_NO_REPLY")
        finally:
            for c in clients:
                c.close()
            if "server" in holder:
                holder["server"].close()

    def test_each_request_runs_as_its_own_task(self):
        """Over WS in the loop and over HTTP (the threaded path), each request's handler runs
        as a task of the server's loop from its first step: it is
        ``asyncio.current_task()`` before and after a wait, ``asyncio.timeout`` works, context
        variables set by one request are not seen by the next, and a loop's task factory makes
        the tasks."""
        var = contextvars.ContextVar("request", default=None)

        async def handler(p, info):
            first = asyncio.current_task()
            leaked = var.get()
            var.set(p["i"])
            if p.get("timeout") and hasattr(asyncio, "timeout"):
                try:
                    async with asyncio.timeout(0.05):
                        await asyncio.sleep(10)
                    return "not timed out"
                except TimeoutError:
                    pass
            if p.get("yield"):
                await asyncio.sleep(0)
            return {
                "task": first is not None,
                "same": asyncio.current_task() is first,
                "mine": var.get() == p["i"],
                "leaked": leaked,
                "made": made[0],
            }

        made = [0]

        def factory(loop, coro, **kw):
            made[0] += 1
            return asyncio.Task(coro, loop=loop, **kw)

        for transport in ("ws", "http"):
            for with_factory in (False, True):
                with self.subTest(transport=transport, factory=with_factory):
                    made[0] = 0

                    async def main():
                        if with_factory:
                            asyncio.get_running_loop().set_task_factory(factory)
                        s = grenache.Server(self.net.l1, handler, transport=transport)
                        c = grenache.Client(self.net.l2, transport=transport)
                        try:
                            self.assertEqual(in_loop(s), transport == "ws")
                            dest = self.dest(s)
                            out = []
                            for i in range(6):
                                p = {"i": i, "yield": i % 2 == 1, "timeout": i == 4}
                                out.append(await c.request_async("x", p, dest=dest, timeout=30))
                            out += await asyncio.gather(*[c.request_async("x", {"i": 10 + i, "yield": i % 2 == 0}, dest=dest, timeout=30) for i in range(20)])
                            return out
                        finally:
                            c.close()
                            s.close()

                    out = asyncio.run(main())
                    for r in out:
                        self.assertEqual((r["task"], r["same"], r["mine"], r["leaked"]), (True, True, True, None), r)
                    made_by_factory = max(r["made"] for r in out)
                    if with_factory:
                        self.assertGreaterEqual(made_by_factory, 26)
                    else:
                        self.assertEqual(made_by_factory, 0)

    def test_node_reference_client_calls_the_in_loop_server(self):
        """grenache-nodejs-ws's PeerRPCClient (tests/interop/ws_client.js) asks an in-loop
        server through the Grapes: results, errors, and many requests in flight."""

        async def handler(payload, info):
            if payload == "nope":
                raise grenache.ReplyError("ERR_NOPE")
            await asyncio.sleep(0)
            return {"echo": payload}

        s = grenache.Server(self.net.l1, handler, transport="ws")
        client = NodeProcess("ws_client.js", "--grape", self.net.g2.url)
        try:
            self.assertTrue(in_loop(s))
            name = "py:inloop-for-node"
            s.start_announcing(name, 0.5)
            client.next(where=lambda v: v.get("event") == "started")

            def ask(i, payload):
                client.send({"id": i, "op": "request", "key": name, "payload": payload, "opts": {"timeout": 5000}})
                return client.next(where=lambda v: v.get("id") == i)

            eventually(lambda: ask(time.monotonic_ns(), "hello")["result"] == {"echo": "hello"}, what="node reaches python")
            self.assertEqual(ask(1, {"x": ["y"]})["result"], {"echo": {"x": ["y"]}})
            self.assertIn("ERR_NOPE", json.dumps(ask(2, "nope")["err"]))
            for i in range(200):
                client.send({"id": f"b{i}", "op": "request", "key": name, "payload": i, "opts": {"timeout": 10000}})
            got = {}
            for _ in range(200):
                r = client.next(where=lambda v: str(v.get("id")).startswith("b"))
                got[r["id"]] = r["result"]
            self.assertEqual(got, {f"b{i}": {"echo": i} for i in range(200)})
        finally:
            client.stop()
            s.close()


if __name__ == "__main__":
    unittest.main()
