"""Tests of the in-loop path of ``Client.request_async`` over plain WS: the core picks the
destination and dials it, then the caller's event loop writes the requests and reads the replies
itself. Real Grapes, servers (the library's, the Node reference's from tests/interop, and raw
scripted WebSocket servers for what no well-behaved server does) on loopback (free ports).

Run: python -m unittest discover -s bindings/python/tests -v   (after `maturin develop`)
"""

import asyncio
import base64
import gc
import hashlib
import json
import os
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
from test_grenache import Network, NodeProcess, eventually, free_port, make_certs


async def echo(payload, info):
    if isinstance(payload, dict) and payload.get("sleep"):
        await asyncio.sleep(payload["sleep"])
    return payload


def plain_echo(payload, info):
    if isinstance(payload, dict) and payload.get("fail"):
        raise grenache.ReplyError(payload["fail"])
    if isinstance(payload, dict) and payload.get("sleep"):
        time.sleep(payload["sleep"])
    return payload


def loop_client(client, loop=None):
    """The client's in-loop state on the running loop (None when it has none)."""
    box = grenache._results(loop or asyncio.get_running_loop())
    return box.clients.get(client) if box.clients is not None else None


async def warm(client, key, dest=None, payload="warm"):
    """Requests until the loop has a socket to the worker (the first ones take the core's path
    while it is dialled)."""
    for _ in range(200):
        await client.request_async(key, payload, dest=dest, timeout=10)
        lc = loop_client(client)
        if lc is not None and lc.native.dests:
            return lc
        await asyncio.sleep(0.01)
    raise AssertionError("no socket on the loop")


# ---------------------------------------------------------------------------------------------
# A scripted WebSocket server, for what no well-behaved server does.


class FakeWs:
    """One accepted, upgraded socket of a ``FakeServer``: reads the client's (masked) frames and
    writes unmasked ones."""

    def __init__(self, sock, rest):
        self.s = sock
        self.buf = rest

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        """The next frame: (opcode, payload)."""
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._need(8))[0]
        key = self._need(4) if b1 & 0x80 else None
        data = self._need(n)
        if key and data:
            k = (key * (len(data) // 4 + 1))[: len(data)]
            data = (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")
        return b0 & 0x0F, data

    def request(self):
        """The next request envelope, skipping pongs."""
        while True:
            op, data = self.recv()
            if op in (1, 2):
                return json.loads(data)
            if op == 8:
                raise EOFError

    def send(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
        else:
            head = bytes([0x80 | opcode, 127]) + struct.pack(">Q", n)
        self.s.sendall(head + payload)

    def reply(self, rid, err, result):
        self.send(1, json.dumps([rid, err, result]).encode())

    def close_frame(self, code):
        self.send(8, struct.pack(">H", code))


class FakeServer:
    """A WS server on a free port that runs ``script(ws, n)`` for its n-th socket (0-based) on
    a thread of its own."""

    def __init__(self, script):
        self.script = script
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.dest = f"127.0.0.1:{self.port}"
        self.accepted = 0
        self.errors = []
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            n = self.accepted
            self.accepted += 1
            self.socks.append(s)
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s, n):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return
                buf += chunk
            head, rest = buf.split(b"\r\n\r\n", 1)
            key = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:")][0]
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.script(FakeWs(s, rest), n)
        except (EOFError, OSError):
            pass
        except Exception as e:  # shown by the test
            self.errors.append(e)
        finally:
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.lsock.close()
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def answer_all(ws, n):
    """A well-behaved server: answers every request with its payload."""
    while True:
        rid, _, payload = ws.request()
        ws.reply(rid, None, payload)


# ---------------------------------------------------------------------------------------------


class AioClientTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.net = Network()

    @classmethod
    def tearDownClass(cls):
        cls.net.stop()

    def test_the_path_is_taken_where_it_applies(self):
        """Plain WS: in the loop once the socket is dialled (a request in flight is the loop's);
        ``in_loop=False``, ``retry`` above 1, HTTP and GRENACHE_PYTHON_IN_LOOP=0: the core's
        path."""
        with grenache.Server(self.net.l1, plain_echo, transport="ws") as s:
            dest = f"127.0.0.1:{s.port}"

            async def main(c, retry, want):
                await warm(c, "x", dest) if want else await c.request_async("x", 0, dest=dest, timeout=10)
                task = asyncio.ensure_future(c.request_async("x", {"sleep": 0.2, "v": retry}, dest=dest, timeout=10, retry=retry))
                await asyncio.sleep(0.05)
                lc = loop_client(c)
                self.assertEqual(lc is not None and lc.native.in_flight == 1, want)
                self.assertEqual(await task, {"sleep": 0.2, "v": retry})

            for kwargs, retry, want in [({}, 0, True), ({}, 1, True), ({}, 2, False), ({"in_loop": False}, 0, False)]:
                with self.subTest(kwargs=kwargs, retry=retry):
                    with grenache.Client(self.net.l2, transport="ws", **kwargs) as c:
                        asyncio.run(main(c, retry, want))
            with grenache.Server(self.net.l1, plain_echo, transport="http") as h, grenache.Client(self.net.l2) as c:
                self.assertFalse(c._in_loop)
                self.assertEqual(asyncio.run(c.request_async("x", 3, dest=f"127.0.0.1:{h.port}", timeout=10)), 3)
        script = textwrap.dedent(
            """
            import grenache
            with grenache.Grape(host="127.0.0.1") as g, grenache.Link(g.url) as link:
                c = grenache.Client(link, transport="ws")
                print("in_loop", c._in_loop, flush=True)
                c.close()
            """
        )
        env = dict(os.environ, GRENACHE_PYTHON_IN_LOOP="0")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(out.stdout.strip(), "in_loop False", out.stderr[-2000:])

    def test_lookup_and_choice_stay_the_cores(self):
        """Through the Grapes: the first request looks the key up (core's path), the next ones go
        on the loop's socket; with two workers both get requests (random choice), each on a
        socket of its own."""
        servers = [grenache.Server(self.net.l1, echo, transport="ws") for _ in range(2)]
        try:
            for s in servers:
                s.start_announcing("aio:choice", 0.5)
            ports = {f"127.0.0.1:{s.port}" for s in servers}
            eventually(lambda: set(self.net.l2.lookup("aio:choice")) == ports, what="both announced")

            async def main(c):
                await warm(c, "aio:choice")
                got = await asyncio.gather(*[c.request_async("aio:choice", i, timeout=10) for i in range(400)])
                self.assertEqual(got, list(range(400)))
                for _ in range(100):
                    if set(loop_client(c).native.dests) == ports:
                        break
                    await c.request_async("aio:choice", 0, timeout=10)
                self.assertEqual(set(loop_client(c).native.dests), ports)

            with grenache.Client(self.net.l2, transport="ws") as c:
                asyncio.run(main(c))
        finally:
            for s in servers:
                s.close()

    def test_order_per_request_with_many_in_flight(self):
        """Thousands of requests in flight on one socket, answered out of order (an ``async
        def`` handler that sleeps for some), and sequential chains: each caller gets its own
        request's reply, chains see theirs in order; against the library's in-loop server and a
        plain handler's server."""
        for handler in (echo, plain_echo):
            with self.subTest(handler=handler.__name__), grenache.Server(self.net.l1, handler, transport="ws") as s:
                dest = f"127.0.0.1:{s.port}"

                async def main(c):
                    await warm(c, "x", dest)
                    payloads = [{"i": i, "sleep": [0, 0, 0, 0.001, 0.02][i % 5] if handler is echo else 0} for i in range(3000)]
                    got = await asyncio.gather(*[c.request_async("x", p, dest=dest, timeout=30) for p in payloads])
                    self.assertEqual(got, payloads)

                    async def chain(k):
                        return [(await c.request_async("x", [k, j], dest=dest, timeout=30))[1] for j in range(50)]

                    for k, seen in enumerate(await asyncio.gather(*[chain(k) for k in range(30)])):
                        self.assertEqual(seen, list(range(50)), f"chain {k}")
                    self.assertEqual(loop_client(c).native.dests, [dest])
                    self.assertEqual(loop_client(c).native.in_flight, 0)

                with grenache.Client(self.net.l2, transport="ws") as c:
                    asyncio.run(main(c))

    def test_one_client_on_loops_of_several_threads(self):
        """One client used by loops on four threads at once: each loop has its own socket, every
        caller gets its own reply; closing the client from the main thread fails what is in
        flight on every loop."""
        with grenache.Server(self.net.l1, echo, transport="ws") as s, grenache.Client(self.net.l2, transport="ws") as c:
            dest = f"127.0.0.1:{s.port}"
            results, errors = {}, []

            def run(k):
                async def main():
                    await warm(c, "x", dest)
                    got = await asyncio.gather(*[c.request_async("x", [k, i], dest=dest, timeout=10) for i in range(500)])
                    pending = asyncio.ensure_future(c.request_async("x", {"sleep": 5}, dest=dest, timeout=10))
                    await asyncio.sleep(0.05)
                    results[k] = got == [[k, i] for i in range(500)] and loop_client(c).native.in_flight == 1
                    closed.wait(10)  # (the loop is held: the close reaches it through call_soon_threadsafe)
                    try:
                        await pending
                    except grenache.CancelledError:
                        return
                    errors.append((k, "not cancelled"))

                try:
                    asyncio.run(main())
                except Exception as e:
                    errors.append((k, e))

            closed = threading.Event()
            threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            eventually(lambda: len(results) == 4, timeout=30, what="every loop answered")
            time.sleep(0.1)
            c.close()
            closed.set()
            for t in threads:
                t.join(20)
            self.assertEqual(results, {k: True for k in range(4)})
            self.assertEqual(errors, [])

    def test_remote_errors_and_timeouts(self):
        """A handler's error is ``RemoteError`` with its message; a request with no reply in
        time fails ``TimeoutError`` with the core's message, the socket stays usable and the
        late reply is dropped."""
        with grenache.Server(self.net.l1, plain_echo, transport="ws") as s:
            dest = f"127.0.0.1:{s.port}"

            async def main(c):
                lc = await warm(c, "x", dest)
                with self.assertRaises(grenache.RemoteError) as e:
                    await c.request_async("x", {"fail": "ERR_NOPE"}, dest=dest, timeout=10)
                self.assertEqual(e.exception.message, "ERR_NOPE")
                t0 = time.monotonic()
                with self.assertRaises(grenache.TimeoutError) as e:
                    await c.request_async("x", {"sleep": 0.5}, dest=dest, timeout=0.2)
                self.assertTrue(0.15 < time.monotonic() - t0 < 2.0, time.monotonic() - t0)
                self.assertEqual((e.exception.name, e.exception.message), ("ERR_TIMEOUT", "no reply within 200ms"))
                self.assertEqual(lc.native.in_flight, 0)
                # Earlier and later deadlines than the one armed; the socket still answers.
                got = await asyncio.gather(
                    c.request_async("x", {"sleep": 0.3}, dest=dest, timeout=0.1),
                    c.request_async("x", 7, dest=dest, timeout=5),
                    return_exceptions=True,
                )
                self.assertIsInstance(got[0], grenache.TimeoutError)
                self.assertEqual(got[1], 7)
                await asyncio.sleep(0.5)  # the late replies come and are dropped
                self.assertEqual(await c.request_async("x", 8, dest=dest, timeout=5), 8)
                self.assertEqual(lc.native.dests, [dest])

            with grenache.Client(self.net.l2, transport="ws") as c:
                asyncio.run(main(c))

    def test_server_gone_or_closing_the_socket(self):
        """What is in flight when the server closes its socket (a close frame), when the socket
        just ends, or when the server closes (the library's server, with a close frame) fails
        ``ClosedError`` with the core's message; the next requests dial again. Pings are
        answered."""

        pongs = []

        def close_frame(ws, n):
            ws.send(9, b"hi")  # a ping: the client answers it
            ponged = dropping = False
            while True:
                op, data = ws.recv()
                if op == 10:
                    pongs.append(data)
                    ponged = True
                    if dropping:
                        return
                    continue
                if op == 8:
                    return
                rid, _, payload = json.loads(data)
                if payload == "close":
                    ws.close_frame(1000)
                    ws.recv()
                    return
                if payload == "drop":
                    # The socket ends once everything the client sent was read (its pong too):
                    # with bytes unread the kernel would reset it instead ("the socket failed").
                    if ponged:
                        return
                    dropping = True
                    continue
                if isinstance(payload, dict) and payload.get("never"):
                    continue
                ws.reply(rid, None, payload)

        fake = FakeServer(close_frame)
        try:

            async def main(c):
                lc = await warm(c, "x", fake.dest)
                for what, message in [("close", "ERR_TRANSPORT_CLOSE: the server closed the socket"), ("drop", "ERR_TRANSPORT_CLOSE: the socket closed")]:
                    lc = await warm(c, "x", fake.dest)
                    other = asyncio.ensure_future(c.request_async("x", {"never": 1}, dest=fake.dest, timeout=10))
                    with self.assertRaises(grenache.ClosedError) as e:
                        await asyncio.gather(c.request_async("x", what, dest=fake.dest, timeout=10), other)
                    self.assertEqual((e.exception.name, e.exception.message), ("ERR_TRANSPORT_CLOSE", message), what)
                    # The request waiting beside it (its reply never came) failed alike.
                    with self.assertRaises(grenache.ClosedError):
                        await other
                    self.assertEqual(lc.native.dests, [])
                self.assertEqual(fake.errors, [])
                self.assertIn(b"hi", pongs)

            with grenache.Client(self.net.l2, transport="ws") as c:
                asyncio.run(main(c))
        finally:
            fake.close()

        s = grenache.Server(self.net.l1, echo, transport="ws")
        dest = f"127.0.0.1:{s.port}"

        async def server_closes(c):
            lc = await warm(c, "x", dest)
            tasks = [asyncio.ensure_future(c.request_async("x", {"sleep": 5}, dest=dest, timeout=10)) for _ in range(3)]
            await asyncio.sleep(0.1)
            self.assertEqual(lc.native.in_flight, 3)
            await asyncio.get_running_loop().run_in_executor(None, s.close)
            for t in tasks:
                with self.assertRaises(grenache.TransportError) as e:
                    await t
                self.assertIn("ERR_TRANSPORT_CLOSE", e.exception.message)
            self.assertEqual(lc.native.in_flight, 0)

        try:
            # The server runs on another loop (its own thread): closing it closes its sockets.
            with grenache.Client(self.net.l2, transport="ws") as c:
                asyncio.run(server_closes(c))
        finally:
            s.close()

    def test_drained_server_hands_unread_requests_to_another_path(self):
        """A server that closes with 4001 (it drained: what it did not answer was not handled)
        does not fail the requests left: they go to the core's path, as the core's client sends
        them to another worker."""

        def drain_first(ws, n):
            rid, _, payload = ws.request()
            if n == 0 and payload != "warm":
                ws.close_frame(4001)
                return
            ws.reply(rid, None, payload)
            if n == 0:
                drain_first(ws, n)
            else:
                answer_all(ws, n)

        fake = FakeServer(drain_first)
        try:

            async def main(c):
                lc = await warm(c, "x", fake.dest)
                self.assertEqual(await c.request_async("x", "again", dest=fake.dest, timeout=10), "again")
                self.assertEqual(lc.native.in_flight, 0)

            with grenache.Client(self.net.l2, transport="ws") as c:
                asyncio.run(main(c))
            self.assertEqual(fake.errors, [])
        finally:
            fake.close()

    def test_a_server_that_does_not_read_is_closed(self):
        """Requests pile up for a server that reads nothing: past the outbox bound the socket is
        closed and what is in flight fails ``ClosedError``."""
        stop = threading.Event()

        def reads_nothing(ws, n):
            if n == 0:
                rid, _, payload = ws.request()
                ws.reply(rid, None, payload)
                stop.wait(30)
            else:
                answer_all(ws, n)

        fake = FakeServer(reads_nothing)
        try:

            async def main(c):
                await warm(c, "x", fake.dest)
                big = "x" * (1 << 20)
                got = await asyncio.gather(*[c.request_async("x", big, dest=fake.dest, timeout=30) for _ in range(80)], return_exceptions=True)
                failed = [g for g in got if isinstance(g, Exception)]
                # Those sent once the socket was given up took the core's path (another socket).
                self.assertTrue(failed and len(failed) < 80, len(failed))
                for g in failed:
                    self.assertIsInstance(g, grenache.ClosedError)
                    # Given up past the bound; or, for a request on the socket as it was being
                    # given up, its end or failure.
                    self.assertTrue(g.message.startswith("ERR_TRANSPORT_CLOSE: "), g.message)
                self.assertTrue(any(g.message.endswith("does not read its socket") for g in failed))
                self.assertTrue(all(g == big for g in got if not isinstance(g, Exception)))

            with grenache.Client(self.net.l2, transport="ws") as c:
                asyncio.run(main(c))
        finally:
            stop.set()
            fake.close()

    def test_loop_closed_with_requests_pending(self):
        """A loop that shuts down with requests on its sockets fails them (``ClosedError``):
        no future is left waiting, the sockets are closed; the client then serves another
        loop."""
        with grenache.Server(self.net.l1, echo, transport="ws") as s, grenache.Client(self.net.l2, transport="ws") as c:
            dest = f"127.0.0.1:{s.port}"
            loop = asyncio.new_event_loop()
            futs = []

            async def start():
                lc = await warm(c, "x", dest)
                for _ in range(5):
                    fut = loop.create_future()
                    self.assertTrue(lc.native.request("x", '{"sleep":2}', fut, 10000, dest))
                    futs.append(fut)
                return lc

            lc = loop.run_until_complete(start())
            self.assertEqual(lc.native.in_flight, 5)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            for fut in futs:
                self.assertTrue(fut.done())
                self.assertIsInstance(fut.exception(), grenache.ClosedError)
                self.assertIn("event loop", fut.exception().message)
            self.assertEqual(lc.native.in_flight, 0)
            self.assertEqual(lc.native.dests, [])
            # Through asyncio.run, with tasks still waiting: they are cancelled, nothing hangs.

            async def leave_pending():
                await warm(c, "x", dest)
                for _ in range(3):
                    asyncio.ensure_future(c.request_async("x", {"sleep": 2}, dest=dest, timeout=10))
                await asyncio.sleep(0.05)

            t0 = time.monotonic()
            asyncio.run(leave_pending())
            self.assertLess(time.monotonic() - t0, 1.5)
            self.assertEqual(asyncio.run(c.request_async("x", 9, dest=dest, timeout=10)), 9)

    def test_cancellation_and_client_close(self):
        """A cancelled request's late reply is dropped and the socket keeps serving; closing the
        client fails what is in flight (``CancelledError``, as the core's path) and closes the
        sockets, as does dropping it unclosed."""
        with grenache.Server(self.net.l1, echo, transport="ws") as s:
            dest = f"127.0.0.1:{s.port}"

            async def main(c):
                lc = await warm(c, "x", dest)
                task = asyncio.ensure_future(c.request_async("x", {"sleep": 0.2}, dest=dest, timeout=10))
                await asyncio.sleep(0.05)
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertEqual(await asyncio.gather(*[c.request_async("x", i, dest=dest, timeout=10) for i in range(50)]), list(range(50)))
                await asyncio.sleep(0.3)
                self.assertEqual(lc.native.in_flight, 0)
                self.assertEqual(await c.request_async("x", "after", dest=dest, timeout=10), "after")
                pending = [asyncio.ensure_future(c.request_async("x", {"sleep": 2}, dest=dest, timeout=10)) for _ in range(3)]
                await asyncio.sleep(0.05)
                c.close()
                for t in pending:
                    with self.assertRaises(grenache.CancelledError):
                        await t
                self.assertEqual(lc.native.dests, [])

            c = grenache.Client(self.net.l2, transport="ws")
            asyncio.run(main(c))

            async def dropped():
                c = grenache.Client(self.net.l2, transport="ws")
                native = (await warm(c, "x", dest)).native
                self.assertEqual(native.dests, [dest])
                del c
                gc.collect()
                self.assertEqual(native.dests, [])  # a client dropped unclosed closed its sockets

            asyncio.run(dropped())

    def test_fallbacks_tls_retry_and_dead_workers(self):
        """A destination nothing listens on fails as on the core's path (``ConnectError``) and
        gets no socket; with a dead worker announced beside a live one, every request is
        answered (the core records the dead one and fails over)."""
        dead = free_port()

        async def main(c):
            with self.assertRaises(grenache.ConnectError):
                await c.request_async("x", 1, dest=f"127.0.0.1:{dead}", timeout=5)
            await asyncio.sleep(0.1)
            with self.assertRaises(grenache.ConnectError):
                await c.request_async("x", 1, dest=f"127.0.0.1:{dead}", timeout=5)
            self.assertEqual(loop_client(c).native.dests, [])

        with grenache.Client(self.net.l2, transport="ws") as c:
            asyncio.run(main(c))

        with grenache.Server(self.net.l1, echo, transport="ws") as s:
            s.start_announcing("aio:dead", 0.5)
            self.net.l1.start_announcing("aio:dead", dead, 0.5)
            try:
                eventually(lambda: len(self.net.l2.lookup("aio:dead")) == 2, what="both announced")

                async def failover(c):
                    got = await asyncio.gather(*[c.request_async("aio:dead", i, timeout=10) for i in range(100)])
                    self.assertEqual(got, list(range(100)))
                    for i in range(200):
                        self.assertEqual(await c.request_async("aio:dead", i, timeout=10), i)
                    self.assertEqual(loop_client(c).native.dests, [f"127.0.0.1:{s.port}"])

                with grenache.Client(self.net.l2, transport="ws") as c:
                    asyncio.run(failover(c))
            finally:
                self.net.l1.stop_announcing("aio:dead", dead)

    def test_tls_keeps_the_cores_path(self):
        """WSS: ``request_async`` goes through the library's threads, results and errors as
        before, and the loop gets no socket."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pem, fingerprint = make_certs(tmp)
        server_tls = grenache.ServerTls(pem["server.crt"], pem["server.key"], pem["ca.crt"], "required")
        good = grenache.ClientTls(pem["ca.crt"], pem["client.crt"], pem["client.key"])

        async def h(payload, info):
            if payload == "fail":
                raise grenache.ReplyError("ERR_TLS_NOPE")
            return [payload, info.fingerprint]

        with grenache.Server(self.net.l1, h, transport="ws", tls=server_tls) as s, grenache.Client(self.net.l2, transport="ws", tls=good) as c:
            dest = f"127.0.0.1:{s.port}"
            self.assertFalse(c._in_loop)

            async def main():
                got = await asyncio.gather(*[c.request_async("x", i, dest=dest, timeout=10) for i in range(50)])
                self.assertEqual(got, [[i, fingerprint] for i in range(50)])
                with self.assertRaises(grenache.RemoteError) as e:
                    await c.request_async("x", "fail", dest=dest, timeout=10)
                self.assertEqual(e.exception.message, "ERR_TLS_NOPE")
                self.assertIsNone(loop_client(c))

            asyncio.run(main())

    def test_node_reference_server(self):
        """grenache-nodejs-ws's PeerRPCServer (tests/interop/ws_server.js) through the Grapes:
        results, its errors, many in flight on the loop's socket."""
        for _ in range(5):
            node = NodeProcess("ws_server.js", "--grape", self.net.g1.url, "--name", "aio:node", "--port", str(free_port()))
            try:
                node.next(timeout=30, where=lambda v: v.get("event") == "started")
                break
            except Exception:
                node.stop()
        else:
            raise AssertionError("ws_server.js did not start")
        try:

            async def main(c):
                lc = await warm(c, "aio:node", payload="hello")
                self.assertEqual(await c.request_async("aio:node", "hello", timeout=10), "world")
                with self.assertRaises(grenache.RemoteError) as e:
                    await c.request_async("aio:node", "fail", timeout=10)
                self.assertEqual(e.exception.message, "ERR_BOOM")
                got = await asyncio.gather(*[c.request_async("aio:node", {"sleep": i % 7, "v": i}, timeout=10) for i in range(500)])
                self.assertEqual(got, list(range(500)))
                self.assertEqual(len(lc.native.dests), 1)
                with self.assertRaises(grenache.TimeoutError):
                    await c.request_async("aio:node", {"sleep": 300, "v": 0}, timeout=0.1)

            with grenache.Client(self.net.l2, transport="ws") as c:
                asyncio.run(main(c))
        finally:
            node.stop()


if __name__ == "__main__":
    unittest.main()
