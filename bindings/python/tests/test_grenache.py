"""Tests of the Python binding: real Grapes, servers and clients on loopback (free ports), and
the Node.js reference peers from tests/interop (installed by scripts/test.sh) on the other side.

Run: python -m unittest discover -s bindings/python/tests -v   (after `maturin develop`)
"""

import asyncio
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import unittest

import grenache

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
INTEROP = os.path.join(ROOT, "tests", "interop")


def eventually(check, timeout=20.0, interval=0.05, what="condition"):
    """Calls `check` until it returns a true value (returned) or raises nothing; fails after
    `timeout` seconds with the last error."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
        except Exception as e:  # not yet
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout}s (last error: {last!r})")


class Network:
    """Two Grapes that bootstrap from each other, and a Link to each."""

    def __init__(self):
        self.g1 = grenache.Grape(host="127.0.0.1")
        self.g2 = grenache.Grape(bootstrap=[f"127.0.0.1:{self.g1.dht_port}"], host="127.0.0.1")
        self.l1 = grenache.Link(self.g1.url)
        self.l2 = grenache.Link(self.g2.url)
        # g1 learns of g2 when g2's bootstrap query reaches it; until then an announce through
        # g1 fails with "no nodes", whichever test runs first.
        for link in (self.l1, self.l2):
            eventually(lambda: link.announce("test-network-ready", 1) is None, what="a Grape with a peer")

    def stop(self):
        self.l1.close()
        self.l2.close()
        self.g2.stop()
        self.g1.stop()


class NodeProcess:
    """A Node reference peer from tests/interop, speaking JSON lines on stdin/stdout."""

    def __init__(self, script, *args):
        node = shutil.which("node")
        if node is None or not os.path.isdir(os.path.join(INTEROP, "node_modules")):
            raise AssertionError("node and tests/interop/node_modules are required (scripts/test.sh installs them)")
        self.p = subprocess.Popen(
            [node, os.path.join(INTEROP, script), *args],
            cwd=INTEROP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def next(self, timeout=30.0, where=lambda v: True):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching line from the Node process")
            v = self.lines.get(timeout=left)
            if where(v):
                return v

    def send(self, obj):
        self.p.stdin.write(json.dumps(obj) + "\n")
        self.p.stdin.flush()

    def stop(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=5)
        # The process is gone: its stdout ends, the reader leaves, and the pipe is closed.
        self.reader.join(timeout=5)
        if not self.reader.is_alive():
            self.p.stdout.close()


def interrupt_blocking_call(script, *args):
    """Runs ``script`` (``python -c``, with ``args``) until it prints ``waiting`` (it is about
    to block in a call), sends it SIGINT half a second later and returns ``(stdout,
    returncode)``. The process is killed if it outlives the test."""
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        if line != "waiting":
            raise AssertionError(f"the script printed {line!r} before blocking")
        time.sleep(0.5)  # inside the blocking call by now
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
        return out, p.returncode
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The marks of the requests whose handler has started (dict payloads with a "mark"): what a
# test waits for before it shuts a server down under a running request.
STARTED = set()
_marks = itertools.count()


def new_mark():
    return f"m{next(_marks)}"


def note_started(payload):
    if isinstance(payload, dict) and "mark" in payload:
        STARTED.add(payload["mark"])


def wait_started(mark):
    eventually(lambda: mark in STARTED, what=f"the handler of request {mark} runs")


def handler(payload, info):
    note_started(payload)
    if payload == "hello":
        return "world"
    if payload == "nope":
        raise grenache.ReplyError("ERR_NOPE")
    if payload == "boom":
        raise RuntimeError("a bug in the handler")
    if isinstance(payload, dict) and "sleep" in payload:
        time.sleep(payload["sleep"])
        return payload.get("v")
    return {"echo": payload, "fingerprint": info.fingerprint}


def in_thread(fn):
    """Runs ``fn()`` on a thread of its own; returns the thread and the list where the
    ``GrenacheError`` it raises, if any, lands."""
    errors = []

    def run():
        try:
            fn()
        except grenache.GrenacheError as e:
            errors.append(e)

    th = threading.Thread(target=run)
    th.start()
    return th, errors


class DhtStateTest(unittest.TestCase):
    def test_dht_state_is_saved_on_stop(self):
        import tempfile

        g1 = grenache.Grape(host="127.0.0.1")
        try:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "dht.json")
                g = grenache.Grape(bootstrap=[f"127.0.0.1:{g1.dht_port}"], host="127.0.0.1", dht_state=path)
                time.sleep(1.0)  # the bootstrap walk on loopback takes milliseconds
                g.stop()
                with open(path) as f:
                    saved = json.load(f)
                self.assertEqual(saved["version"], 1)
                self.assertEqual(len(saved["id"]), 40)
                self.assertIn(f"127.0.0.1:{g1.dht_port}", [n["addr"] for n in saved["nodes"]])
        finally:
            g1.stop()

    def test_grape_options_by_name(self):
        # A key limit of 8 bytes: a longer service name is refused by the Grape's API.
        with grenache.Grape(max_key_len=8, peer_max_age_ms=60000, queriesPerIp=100) as g:
            link = grenache.Link(g.url)
            try:
                with self.assertRaises(grenache.GrenacheError) as e:
                    link.announce("a-name-longer-than-8", 1234)
                self.assertIn("ERR_GRAPE_KEY_TOO_LONG", str(e.exception))
            finally:
                link.close()
        with self.assertRaises(grenache.InvalidArgumentError):
            grenache.Grape(nope=1)



class LocalTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.net = Network()
        cls.servers = {}
        for transport in ("http", "ws", "zmq"):
            s = grenache.Server(cls.net.l1, handler, transport=transport)
            s.start_announcing(f"py:{transport}", 0.5)
            cls.servers[transport] = s
        cls.clients = {t: grenache.Client(cls.net.l2, transport=t) for t in ("http", "ws", "zmq")}
        for t, c in cls.clients.items():
            eventually(lambda: c.request(f"py:{t}", "hello") == "world", what=f"{t} server visible")

    @classmethod
    def tearDownClass(cls):
        for c in cls.clients.values():
            c.close()
        for s in cls.servers.values():
            s.close()
        cls.net.stop()

    def test_request_round_trip(self):
        payload = {"a": [1, 2.5, None, True], "s": "héllo ✓", "n": {"deep": [[]]}}
        for t, c in self.clients.items():
            with self.subTest(transport=t):
                self.assertEqual(c.request(f"py:{t}", "hello"), "world")
                self.assertEqual(c.request(f"py:{t}", payload), {"echo": payload, "fingerprint": None})

    def test_server_limits_by_name(self):
        # One connection per source address: a second keep-alive client from 127.0.0.1 is
        # refused while the first holds its connection.
        s = grenache.Server(self.net.l1, handler, limits={"max_connections_per_ip": 1, "idleTimeoutMs": 60000})
        try:
            s.start_announcing("py:limits", 0.5)
            first = grenache.Client(self.net.l2)
            second = grenache.Client(self.net.l2)
            try:
                eventually(lambda: first.request("py:limits", "hello") == "world", what="limited server visible")
                with self.assertRaises(grenache.GrenacheError):
                    second.request("py:limits", "hello", timeout=2)
            finally:
                first.close()
                second.close()
        finally:
            s.close()
        for bad in ({"nope": 1}, {"max_connections": 0}):
            with self.assertRaises(grenache.InvalidArgumentError):
                grenache.Server(self.net.l1, handler, limits=bad)

    def test_errors_are_typed(self):
        for t, c in self.clients.items():
            with self.subTest(transport=t):
                with self.assertRaises(grenache.RemoteError) as e:
                    c.request(f"py:{t}", "nope")
                self.assertEqual(e.exception.message, "ERR_NOPE")
                self.assertEqual(e.exception.name, "ERR_REMOTE")
                with self.assertRaises(grenache.RemoteError) as e:
                    c.request(f"py:{t}", "boom")
                self.assertEqual(e.exception.message, "ERR_HANDLER_PANIC")
                # The server keeps serving.
                self.assertEqual(c.request(f"py:{t}", "hello"), "world")
        with self.assertRaises(grenache.LookupEmptyError):
            self.clients["http"].request("py:nobody", "hello")
        with self.assertRaises(grenache.InvalidArgumentError) as e:
            grenache.Client(self.net.l1, transport="carrier-pigeon")
        self.assertIsInstance(e.exception, ValueError)
        with self.assertRaises(grenache.ConnectError):
            self.clients["http"].request("x", "hello", dest=f"127.0.0.1:{free_port()}")

    def test_timeouts_fire_on_time(self):
        for t, c in self.clients.items():
            with self.subTest(transport=t):
                t0 = time.monotonic()
                with self.assertRaises(grenache.TimeoutError) as e:
                    c.request(f"py:{t}", {"sleep": 3, "v": 1}, timeout=0.3)
                self.assertIsInstance(e.exception, TimeoutError)
                self.assertLess(time.monotonic() - t0, 2.5)

    def test_server_reply_timeout(self):
        s = grenache.Server(self.net.l1, handler, reply_timeout=0.2)
        try:
            t0 = time.monotonic()
            with self.assertRaises(grenache.RemoteError) as e:
                self.clients["http"].request("x", {"sleep": 2}, dest=f"127.0.0.1:{s.port}", timeout=10)
            self.assertEqual(e.exception.message, "ERR_TIMEOUT")
            self.assertLess(time.monotonic() - t0, 1.8)
        finally:
            s.close()

    def test_graceful_shutdown(self):
        for t, c in self.clients.items():
            with self.subTest(transport=t):
                # A request in flight when the server shuts down is answered before it closes.
                s = grenache.Server(self.net.l1, handler, transport=t)
                got = []
                mark = new_mark()
                th = threading.Thread(
                    target=lambda: got.append(c.request("x", {"sleep": 0.4, "v": 7, "mark": mark}, dest=f"127.0.0.1:{s.port}", timeout=10))
                )
                th.start()
                wait_started(mark)
                self.assertTrue(s.shutdown(grace=5))
                th.join(5)
                self.assertEqual(got, [7])
                with self.assertRaises(grenache.ConnectError):
                    c.request("x", "hello", dest=f"127.0.0.1:{s.port}")
                s.close()
                # One that outlives the grace is cut off, and shutdown says so (asyncio too).
                s = grenache.Server(self.net.l1, handler, transport=t)
                mark = new_mark()
                th, errors = in_thread(lambda: c.request("x", {"sleep": 3, "mark": mark}, dest=f"127.0.0.1:{s.port}", timeout=10))
                wait_started(mark)
                t0 = time.monotonic()
                self.assertFalse(asyncio.run(s.shutdown_async(grace=0.2)))
                self.assertLess(time.monotonic() - t0, 2)
                th.join(5)
                self.assertEqual(len(errors), 1)
                s.close()

    def test_map_over_workers(self):
        workers = [grenache.Server(self.net.l1, (lambda i: lambda p, info: {"worker": i, "p": p})(i)) for i in range(3)]
        try:
            for w in workers:
                w.announce("py:map")
            c = grenache.Client(self.net.l2)

            def all_three():
                res = c.map("py:map", "x")
                return len(res) == 3 and sorted(r["worker"] for r in res) == [0, 1, 2] and res

            res = eventually(all_three, what="3 workers in map")
            self.assertTrue(all(r["p"] == "x" for r in res))
            c.close()
        finally:
            for w in workers:
                w.close()

    def test_asyncio(self):
        c = self.clients["ws"]

        async def main():
            many = await asyncio.gather(*[c.request_async("py:ws", {"i": i}) for i in range(200)])
            self.assertEqual([m["echo"]["i"] for m in many], list(range(200)))
            with self.assertRaises(grenache.RemoteError):
                await c.request_async("py:ws", "nope")
            self.assertEqual(await self.clients["http"].map_async("py:http", "hello", limit=1), ["world"])
            peers = await self.net.l2.lookup_async("py:http")
            self.assertIn(f"127.0.0.1:{self.servers['http'].port}", peers)

        asyncio.run(main())

    def test_async_def_handler_under_200_concurrent_requests(self):
        """An ``async def`` handler runs on the loop the server was made in; 200 requests in
        flight each wait in the handler at once (all overlap: the last one ends ~50 ms after
        the first starts, not 200 x 50 ms)."""
        running = {"now": 0, "most": 0}

        async def handler(payload, info):
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
            await asyncio.sleep(0.05)
            running["now"] -= 1
            if payload == "nope":
                raise grenache.ReplyError("ERR_NOPE")
            return {"echo": payload, "loop": id(asyncio.get_running_loop())}

        async def main():
            loop_id = id(asyncio.get_running_loop())
            for t in ("http", "ws"):
                with self.subTest(transport=t):
                    running["most"] = 0
                    s = grenache.Server(self.net.l1, handler, transport=t)
                    c = grenache.Client(self.net.l2, transport=t)
                    try:
                        dest = f"127.0.0.1:{s.port}"
                        many = await asyncio.gather(*[c.request_async("x", i, dest=dest, timeout=30) for i in range(200)])
                        self.assertEqual([m["echo"] for m in many], list(range(200)))
                        self.assertEqual({m["loop"] for m in many}, {loop_id}, "ran on the server's loop")
                        self.assertGreater(running["most"], 100, "handlers overlapped")
                        with self.assertRaises(grenache.RemoteError) as e:
                            await c.request_async("x", "nope", dest=dest)
                        self.assertEqual(e.exception.message, "ERR_NOPE")
                    finally:
                        c.close()
                        s.close()

        asyncio.run(main())

    def test_async_def_handler_without_a_running_loop(self):
        async def handler(payload, info):
            await asyncio.sleep(0.01)
            return payload * 2

        s = grenache.Server(self.net.l1, handler)
        try:
            with grenache.Client(self.net.l2) as c:
                self.assertEqual(c.request("x", 21, dest=f"127.0.0.1:{s.port}"), 42)
        finally:
            s.close()

    def test_error_classes_cover_every_core_kind(self):
        families = {"InputError", "TransportError", "DiscoveryError", "RpcError", "TlsError", "LibraryError"}
        kinds = grenache._native.error_kinds()
        self.assertGreaterEqual(len(kinds), 30)
        for code, name, family, cls_name, message in kinds:
            cls = getattr(grenache, cls_name, None)
            self.assertIsNotNone(cls, f"no class for {name}")
            self.assertIn(cls_name, grenache.__all__)
            self.assertIn(family, families)
            self.assertTrue(issubclass(cls, getattr(grenache, family)))
            e = grenache._make_error(code, name, "")
            self.assertIsInstance(e, cls)
            self.assertEqual((e.code, e.name), (code, name))
        self.assertTrue(issubclass(grenache.TimeoutError, TimeoutError))

    def test_reply_answers_once(self):
        seen = queue.Queue()

        def handler(payload, info):
            r = info.defer()
            r.send("first")
            try:
                r.error("ERR_TOO_LATE")
            except grenache.GrenacheError as e:
                seen.put(e)

        s = grenache.Server(self.net.l1, handler)
        try:
            with grenache.Client(self.net.l2) as c:
                self.assertEqual(c.request("x", 1, dest=f"127.0.0.1:{s.port}"), "first")
            e = seen.get(timeout=5)
            self.assertIsInstance(e, grenache.AlreadyUsedError)
            self.assertEqual((e.code, e.name), (103, "ERR_ALREADY_USED"))
        finally:
            s.close()

    def test_close_cancels_requests_in_flight(self):
        c = grenache.Client(self.net.l2)
        th, errors = in_thread(lambda: c.request("py:http", {"sleep": 2}, timeout=10))
        time.sleep(0.3)
        t0 = time.monotonic()
        c.close()
        th.join(5)
        self.assertFalse(th.is_alive())
        self.assertLess(time.monotonic() - t0, 1.5)
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], grenache.CancelledError)

    def test_put_get(self):
        link = self.net.l1
        h = link.put("hello dht")
        self.assertEqual(len(h), 40)
        item = eventually(lambda: self.net.l2.get(h), what="immutable item")
        self.assertEqual(item["v"], "hello dht")
        self.assertIsNone(link.get("00" * 20))
        key = grenache.Keypair.generate()
        self.assertEqual(grenache.Keypair.from_secret_hex(key.secret_hex).public_hex, key.public_hex)
        target = link.put_mutable(key, "v1", 1, salt="s")
        self.assertEqual(link.get(target, salt="s")["v"], "v1")
        link.put_mutable(key, "v2", 2, salt="s", cas=1)
        self.assertEqual(eventually(lambda: self.net.l2.get(target, salt="s"))["v"], "v2")
        with self.assertRaises(grenache.SeqTooLowError):
            link.put_mutable(key, "old", 1, salt="s")
        with self.assertRaises(grenache.CasMismatchError):
            link.put_mutable(key, "v3", 3, salt="s", cas=1)
        with self.assertRaises(grenache.InvalidArgumentError):
            grenache.Keypair.from_secret_hex("zz")

    def test_pubsub(self):
        for transport in ("ws", "zmq"):
            with self.subTest(transport=transport):
                got = queue.Queue()
                with grenache.Publisher(self.net.l1, transport=transport) as pub:
                    pub.start_announcing(f"py:chan:{transport}", 0.5)
                    on_message = lambda m, frm: got.put((m, frm))  # noqa: E731
                    with grenache.Subscriber(self.net.l2, f"py:chan:{transport}", on_message, transport=transport) as sub:
                        eventually(lambda: pub.subscribers == 1, what="subscriber connected")
                        self.assertEqual(pub.publish({"n": 1}), 1)
                        pub.publish("plain text")
                        self.assertEqual(got.get(timeout=10)[0], '{"n":1}')
                        msg, frm = got.get(timeout=10)
                        self.assertEqual(msg, "plain text")
                        self.assertEqual(frm, f"127.0.0.1:{pub.port}")
                        eventually(lambda: sub.publishers == 1, what="publisher count")

    def test_keyboard_interrupt_style_signals_do_not_break_waits(self):
        # A blocking call waits in slices; many short ones in a row must all complete.
        for _ in range(200):
            self.assertEqual(self.clients["http"].request("py:http", "hello"), "world")


def make_certs(tmp):
    """A CA, a server and a client certificate made with openssl; returns PEM texts and the
    client certificate's SHA-1 fingerprint as openssl prints it."""

    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=py-test-ca")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2")
    fp = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha1", "-in", "client.crt"], cwd=tmp, check=True, capture_output=True, text=True)
    pem = {}
    for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key"):
        with open(os.path.join(tmp, n)) as f:
            pem[n] = f.read()
    return pem, fp.stdout.strip().split("=", 1)[1]


class UtpTests(unittest.TestCase):
    def test_utp_requests_punches_and_a_libutp_peer(self):
        import socket

        net = Network()
        node = None
        try:
            srv = grenache.Server(net.l1, lambda p, info: {"p": p}, transport="utp")
            other = grenache.Server(net.l1, handler, transport="utp")
            c = grenache.Client(net.l2, transport="utp", timeout=10)
            r = c.request("utp_py", "hi", dest=f"127.0.0.1:{srv.port}")
            self.assertEqual(r["p"], "hi")
            # Punches: `other` hears `srv`'s; a silent endpoint gives the typed error.
            seen = queue.Queue()
            other.on_punch(seen.put)
            srv.punch(f"127.0.0.1:{other.port}", timeout=10)
            self.assertEqual(seen.get(timeout=10), f"127.0.0.1:{srv.port}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
                silent.bind(("127.0.0.1", 0))
                with self.assertRaises(grenache.PunchTimeoutError):
                    srv.punch(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
            # The legacy wire against libutp (npm utp-native).
            node = NodeProcess("utp_peer.js")
            ready = node.next(where=lambda v: v.get("ready"))
            self.assertEqual(c.request("utp_py", "hello", dest=f"127.0.0.1:{ready['port']}"), "world")
            with self.assertRaises(grenache.InvalidArgumentError):
                grenache.Client(net.l2, transport="http", broker="b")
            c.close()
            other.close()
            srv.close()
        finally:
            if node is not None:
                node.stop()
            net.stop()


class TlsTests(unittest.TestCase):
    def test_mutual_tls_hands_the_fingerprint_to_the_handler(self):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pem, fingerprint = make_certs(tmp)
        net = Network()
        try:
            server_tls = grenache.ServerTls(pem["server.crt"], pem["server.key"], pem["ca.crt"], "required")
            good = grenache.ClientTls(pem["ca.crt"], pem["client.crt"], pem["client.key"])
            no_cert = grenache.ClientTls(pem["ca.crt"])
            for transport in ("http", "ws"):
                with self.subTest(transport=transport):
                    with grenache.Server(net.l1, handler, transport=transport, tls=server_tls) as s:
                        dest = f"127.0.0.1:{s.port}"
                        with grenache.Client(net.l1, transport=transport, tls=good) as c:
                            res = c.request("tls", {"who": "me"}, dest=dest)
                            self.assertEqual(res, {"echo": {"who": "me"}, "fingerprint": fingerprint})
                        with grenache.Client(net.l1, transport=transport, tls=no_cert) as c:
                            with self.assertRaises(grenache.GrenacheError):
                                c.request("tls", "hello", dest=dest, timeout=5)
                        with grenache.Client(net.l1, transport=transport) as c:
                            with self.assertRaises(grenache.GrenacheError):
                                c.request("tls", "hello", dest=dest, timeout=5)
            # verify_client (WS): sees the fingerprint before the socket is accepted.
            seen = []

            def allow_only_ours(fp, addr):
                seen.append((fp, addr))
                return fp == fingerprint

            with grenache.Server(net.l1, handler, transport="ws", tls=server_tls, verify_client=allow_only_ours) as s:
                with grenache.Client(net.l1, transport="ws", tls=good) as c:
                    self.assertEqual(c.request("tls", "hello", dest=f"127.0.0.1:{s.port}"), "world")
            self.assertEqual(seen[0][0], fingerprint)
            self.assertTrue(seen[0][1].startswith("127.0.0.1:"))
            with grenache.Server(net.l1, handler, transport="ws", tls=server_tls, verify_client=lambda fp, addr: False) as s:
                with grenache.Client(net.l1, transport="ws", tls=good) as c:
                    with self.assertRaises(grenache.GrenacheError):
                        c.request("tls", "hello", dest=f"127.0.0.1:{s.port}", timeout=5)
            with self.assertRaises(grenache.InvalidArgumentError):
                grenache.Server(net.l1, handler, transport="http", verify_client=lambda fp, addr: True)
            with self.assertRaises(grenache.TlsError):
                grenache.ServerTls("not a pem", pem["server.key"])
            with self.assertRaises(grenache.InvalidArgumentError):
                grenache.ServerTls(pem["server.crt"], pem["server.key"], pem["ca.crt"], "sometimes")
        finally:
            net.stop()


class NodeInteropTests(unittest.TestCase):
    """Both directions against grenache-nodejs-link/-http/-ws from npm."""

    @classmethod
    def setUpClass(cls):
        cls.net = Network()
        cls.procs = []

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            p.stop()
        cls.net.stop()

    def node(self, script, *args):
        p = NodeProcess(script, *args)
        self.procs.append(p)
        return p

    def node_server(self, script, *args):
        """A Node server script on a port picked free here (the reference cannot listen on 0
        and report it); another program may take the port first, so a start that fails is
        retried on a new one."""
        for _ in range(5):
            p = self.node(script, *args, "--port", str(free_port()))
            try:
                p.next(timeout=30, where=lambda v: v.get("event") == "started")
                return p
            except (AssertionError, queue.Empty):
                p.stop()
        raise AssertionError(f"{script} did not start in 5 attempts")

    def test_python_client_calls_node_http_and_ws_servers(self):
        self.node_server("http_server.js", "--grape", self.net.g1.url, "--name", "node:http")
        self.node_server("ws_server.js", "--grape", self.net.g1.url, "--name", "node:ws")
        with grenache.Client(self.net.l2) as c:
            res = eventually(lambda: c.request("node:http", {"q": [1, 2]}), what="node http server")
            self.assertEqual(res["from"], "node")
            self.assertEqual(res["payload"], {"q": [1, 2]})
            with self.assertRaises(grenache.RemoteError) as e:
                c.request("node:http", "fail")
            self.assertEqual(e.exception.message, "ERR_BOOM")
        with grenache.Client(self.net.l2, transport="ws") as c:
            self.assertEqual(eventually(lambda: c.request("node:ws", "hello"), what="node ws server"), "world")
            with self.assertRaises(grenache.RemoteError) as e:
                c.request("node:ws", "fail")
            self.assertEqual(e.exception.message, "ERR_BOOM")
            # Blocking requests on the caller's thread (once its socket is dialled) against the
            # reference server: results, remote errors and timeouts as on the library's path.
            deadline = time.monotonic() + 10
            while c._c._direct_sent() == 0:
                self.assertLess(time.monotonic(), deadline, "no request went on the caller's thread")
                self.assertEqual(c.request("node:ws", "hello"), "world")
                time.sleep(0.01)
            sent = c._c._direct_sent()
            for i in range(50):
                self.assertEqual(c.request("node:ws", {"sleep": 0, "v": [i, "é"]}), [i, "é"])
            with self.assertRaises(grenache.RemoteError) as e:
                c.request("node:ws", "fail")
            self.assertEqual(e.exception.message, "ERR_BOOM")
            with self.assertRaises(grenache.TimeoutError):
                c.request("node:ws", {"sleep": 1000, "v": 1}, timeout=0.2)
            self.assertEqual(c.request("node:ws", "hello"), "world")
            self.assertGreaterEqual(c._c._direct_sent() - sent, 52)

    def test_node_clients_call_python_servers(self):
        for transport, script in (("http", "http_client.js"), ("ws", "ws_client.js")):
            with self.subTest(transport=transport):
                s = grenache.Server(self.net.l1, handler, transport=transport)
                try:
                    name = f"py:for-node:{transport}"
                    s.start_announcing(name, 0.5)
                    client = self.node(script, "--grape", self.net.g2.url)
                    client.next(where=lambda v: v.get("event") == "started")

                    def ask(i, payload):
                        client.send({"id": i, "op": "request", "key": name, "payload": payload, "opts": {"timeout": 5000}})
                        return client.next(where=lambda v: v.get("id") == i)

                    first = eventually(lambda: ask(time.monotonic_ns(), "hello")["result"] == "world", what="node reaches python")
                    self.assertTrue(first)
                    r = ask(1, {"x": ["y"]})
                    self.assertEqual(r["result"], {"echo": {"x": ["y"]}, "fingerprint": None})
                    r = ask(2, "nope")
                    self.assertIn("ERR_NOPE", json.dumps(r["err"]))
                finally:
                    s.close()

    def test_node_subscriber_receives_python_publisher(self):
        with grenache.Publisher(self.net.l1) as pub:
            pub.start_announcing("py:pub", 0.5)
            sub = self.node("ws_sub.js", "--grape", self.net.g2.url, "--name", "py:pub")
            sub.next(where=lambda v: v.get("event") == "connected")
            eventually(lambda: pub.subscribers >= 1, what="node subscriber counted")

            def delivered():
                pub.publish("from python")
                return sub.next(timeout=0.5, where=lambda v: v.get("event") == "message")

            msg = eventually(delivered, what="message at the node subscriber")
            self.assertEqual(msg["data"], "from python")
            # The reference subscriber reconnects with no error listener: stopped before the
            # publisher closes, it does not die of an unhandled ECONNREFUSED.
            sub.stop()

    def test_python_subscriber_receives_node_publisher(self):
        pub = self.node_server("ws_pub.js", "--grape", self.net.g1.url, "--name", "node:pub")
        got = queue.Queue()
        with grenache.Subscriber(self.net.l2, "node:pub", lambda m, frm: got.put(m)):

            def delivered():
                pub.send({"op": "pub", "msg": "from node"})
                return got.get(timeout=0.5)

            self.assertEqual(eventually(delivered, what="message from node"), "from node")


if __name__ == "__main__":
    unittest.main()
