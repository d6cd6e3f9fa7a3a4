"""Tests of a plain handler's plain WS server whose sockets its handler threads read and answer
themselves (leader/followers): where the path applies, order per request with thousands in
flight on one socket, deferred replies and ERR_NO_REPLY, malformed frames, a peer that does not
read, the connection and idle limits, close and graceful shutdown. Real Grapes, servers and raw
WebSocket clients on loopback (free ports).

Run: python -m unittest discover -s bindings/python/tests -v   (after `maturin develop`)
"""

import gc
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
from test_grenache import eventually, new_mark, note_started, wait_started
from test_batching import server_and_client
from test_inloop import check_bad_frames, frame, ws_connect


def echo(payload, info):
    note_started(payload)
    if isinstance(payload, dict) and payload.get("sleep"):
        time.sleep(payload["sleep"])
    return payload


class LeaderFollowersTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.grape = grenache.Grape(host="127.0.0.1")
        cls.link = grenache.Link(cls.grape.url)
        cls.client = grenache.Client(cls.link, transport="ws")

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.link.close()
        cls.grape.stop()

    def dest(self, s):
        return f"127.0.0.1:{s.port}"

    def test_the_path_is_taken_where_it_applies(self):
        """Plain handler over plain WS: the handler's threads; with a reply timeout, over HTTP,
        ``in_loop=False`` or GRENACHE_PYTHON_IN_LOOP=0: the library's I/O threads."""
        cases = [
            (dict(transport="ws"), True),
            (dict(transport="ws", in_loop=False), False),
            (dict(transport="ws", reply_timeout=5.0), False),
            (dict(transport="http"), False),
        ]
        for kwargs, want in cases:
            with self.subTest(kwargs=kwargs):
                with grenache.Server(self.link, echo, **kwargs) as s, grenache.Client(self.link, transport=kwargs["transport"]) as c:
                    self.assertEqual(c.request("x", {"v": 1}, dest=self.dest(s), timeout=10), {"v": 1})
                    n = s._s._lf_sockets()
                    self.assertEqual(n is not None, want)
                    if want:
                        self.assertGreaterEqual(n, 1)
        script = textwrap.dedent(
            """
            import grenache
            with grenache.Grape(host="127.0.0.1") as g, grenache.Link(g.url) as link:
                s = grenache.Server(link, lambda p, info: p, transport="ws")
                print("lf", s._s._lf_sockets() is not None, flush=True)
                s.close()
            """
        )
        env = dict(os.environ, GRENACHE_PYTHON_IN_LOOP="0")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(out.stdout.strip(), "lf False", out.stderr[-2000:])

    def test_order_per_request_with_thousands_in_flight(self):
        """3000 requests pipelined on one socket (past the bound of requests read and not
        answered, where reading pauses and resumes): each reply carries its own rid and payload;
        blocking clients on threads are served meanwhile."""
        s = grenache.Server(self.link, echo, transport="ws")
        try:
            raw = ws_connect(s.port)
            n = 3000
            batch = b"".join(frame(1, json.dumps([f"r{i}", "x", {"i": i}]).encode()) for i in range(n))
            sender = threading.Thread(target=raw.s.sendall, args=(batch,))
            sender.start()
            errors = []

            def call(t):
                try:
                    for i in range(50):
                        if self.client.request("x", [t, i], dest=self.dest(s), timeout=20) != [t, i]:
                            errors.append((t, i))
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))

            threads = [threading.Thread(target=call, args=(t,)) for t in range(4)]
            for t in threads:
                t.start()
            seen = {}
            while len(seen) < n:
                op, body = raw.next_frame(timeout=20)
                self.assertEqual(op, 1)
                rid, err, result = json.loads(body)
                self.assertIsNone(err)
                seen[rid] = result
            sender.join(10)
            for t in threads:
                t.join(30)
            self.assertEqual(errors, [])
            self.assertEqual(seen, {f"r{i}": {"i": i} for i in range(n)})
            raw.close()
        finally:
            s.close()

    def test_a_blocking_handler_leaves_the_other_requests_served(self):
        """While a handler blocks (the thread that read its request runs it), another thread
        takes over the sockets: a request on another socket, and one more on the same socket,
        are answered long before it returns."""
        s = grenache.Server(self.link, echo, transport="ws")
        try:
            a, b = ws_connect(s.port), ws_connect(s.port)
            self.assertEqual(a.request("warm", 0), ["warm", None, 0])
            for _ in range(3):
                a.send_text(json.dumps(["slow", "x", {"sleep": 1.5}]))
                time.sleep(0.05)
                t0 = time.monotonic()
                self.assertEqual(b.request("other", 1), ["other", None, 1])
                self.assertEqual(a.request("same", 2), ["same", None, 2])
                self.assertLess(time.monotonic() - t0, 1.0)
                self.assertEqual(json.loads(a.next_frame(timeout=10)[1]), ["slow", None, {"sleep": 1.5}])
            a.close()
            b.close()
        finally:
            s.close()

    def test_errors_defer_and_no_reply(self):
        """ReplyError, an exception (ERR_HANDLER_PANIC), a reply deferred to another thread, and
        a deferred reply dropped unanswered (ERR_NO_REPLY) reach the client."""
        kept = []

        def handler(payload, info):
            if payload == "fail":
                raise grenache.ReplyError("ERR_NOPE")
            if payload == "bug":
                raise RuntimeError("a bug in the handler")
            if payload == "later":
                reply = info.defer()
                threading.Timer(0.2, reply.send, args=("done later",)).start()
                return None
            if payload == "drop":
                info.defer()  # never answered, then collected
                return None
            if payload == "keep":
                kept.append(info.defer())
                return None
            return payload

        s = grenache.Server(self.link, handler, transport="ws")
        try:
            c, dest = self.client, self.dest(s)
            with self.assertRaises(grenache.RemoteError) as e:
                c.request("x", "fail", dest=dest, timeout=10)
            self.assertEqual(e.exception.message, "ERR_NOPE")
            with self.assertRaises(grenache.RemoteError) as e:
                c.request("x", "bug", dest=dest, timeout=10)
            self.assertEqual(e.exception.message, "ERR_HANDLER_PANIC")
            self.assertEqual(c.request("x", "later", dest=dest, timeout=10), "done later")
            gc.collect()
            with self.assertRaises(grenache.RemoteError) as e:
                c.request("x", "drop", dest=dest, timeout=10)
            self.assertEqual(e.exception.message, "ERR_NO_REPLY")
            # A deferred reply keeps its socket's other requests going.
            raw = ws_connect(s.port)
            raw.send_text(json.dumps(["k", "x", "keep"]))
            eventually(lambda: kept, what="the kept request")
            self.assertEqual(raw.request("a", 1), ["a", None, 1])
            kept[0].send("kept")
            self.assertEqual(json.loads(raw.next_frame()[1]), ["k", None, "kept"])
            raw.close()
        finally:
            s.close()

    def test_malformed_and_oversized_frames_close_only_their_socket(self):
        s = grenache.Server(self.link, echo, transport="ws")
        try:
            self.assertIsNotNone(s._s._lf_sockets())
            good = check_bad_frames(self, s.port)
            good.s.sendall(frame(8, struct.pack(">H", 1000)))
            self.assertEqual(good.close_code(), 1000)
            good.close()
            eventually(lambda: s._s._lf_sockets() == 0, what="the sockets to be forgotten")
        finally:
            s.close()

    def test_a_peer_that_does_not_read_is_closed(self):
        s = grenache.Server(self.link, echo, transport="ws")
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
                ended = True
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

    def test_limits_connections_and_idle(self):
        s = grenache.Server(self.link, echo, transport="ws", limits={"max_connections_per_ip": 2, "ws_idle_timeout_ms": 400})
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

    def test_close_closes_the_sockets(self):
        kept = []

        def handler(payload, info):
            if payload == "keep":
                kept.append(info.defer())
                return None
            return payload

        s = grenache.Server(self.link, handler, transport="ws")
        raw = ws_connect(s.port)
        self.assertEqual(raw.request("a", 1), ["a", None, 1])
        raw.send_text(json.dumps(["b", "x", "keep"]))
        eventually(lambda: kept, what="the deferred request")
        s.close()
        self.assertEqual(raw.close_code(), 1001)
        raw.close()
        kept[0].send("too late")
        self.assertTrue(kept[0].closed)
        with self.assertRaises(grenache.ConnectError):
            self.client.request("x", 1, dest=self.dest(s), timeout=5)

    def test_graceful_shutdown_drains_the_sockets(self):
        """A request running at shutdown is answered, then its socket closes (4001) and
        connects are refused; one that outlives the grace is cut off (1001) and shutdown says
        so."""
        c = grenache.Client(self.link, transport="ws")
        try:
            s = grenache.Server(self.link, echo, transport="ws")
            dest = self.dest(s)
            self.assertEqual(c.request("x", 1, dest=dest, timeout=10), 1)
            raw = ws_connect(s.port)
            self.assertEqual(raw.request("idle", 0), ["idle", None, 0])
            got = []
            mark = new_mark()
            th = threading.Thread(target=lambda: got.append(c.request("x", {"sleep": 0.4, "v": 7, "mark": mark}, dest=dest, timeout=10)))
            th.start()
            wait_started(mark)
            self.assertTrue(s.shutdown(grace=5))
            th.join(5)
            self.assertEqual(got, [{"sleep": 0.4, "v": 7, "mark": mark}])
            self.assertEqual(raw.close_code(), 4001)
            raw.close()
            with self.assertRaises(grenache.ConnectError):
                c.request("x", "hello", dest=dest, timeout=10)
            s.close()

            s = grenache.Server(self.link, echo, transport="ws")
            raw = ws_connect(s.port)
            mark = new_mark()
            raw.send_text(json.dumps(["long", "x", {"sleep": 3, "mark": mark}]))
            wait_started(mark)
            t0 = time.monotonic()
            self.assertFalse(s.shutdown(grace=0.2))
            self.assertLess(time.monotonic() - t0, 2)
            self.assertEqual(raw.close_code(), 1001)
            raw.close()
            s.close()
        finally:
            c.close()

    def test_interpreter_exit_with_the_server_open(self):
        """A process that exits with the server open, its threads waiting at the poller and
        one running a handler, exits promptly and cleanly."""
        script = textwrap.dedent(
            """
            import threading, time, grenache
            def h(p, info):
                if p == "slow":
                    time.sleep(1)
                return p
            g = grenache.Grape(host="127.0.0.1")
            link = grenache.Link(g.url)
            s = grenache.Server(link, h, transport="ws")
            c = grenache.Client(link, transport="ws")
            dest = f"127.0.0.1:{s.port}"
            for i in range(100):
                assert c.request("x", i, dest=dest) == i
            threading.Thread(target=lambda: c.request("x", "slow", dest=dest), daemon=True).start()
            time.sleep(0.3)
            print("exiting", s._s._lf_sockets() > 0, flush=True)
            """
        )
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        self.assertEqual(out.stdout.strip(), "exiting True")
        self.assertLess(time.monotonic() - t0, 20)

    def test_the_poller_polls_before_it_sleeps(self):
        """GRENACHE_PYTHON_POLL_US on the threads at the poller (read once per process: children),
        unset (50 us where the process may run on two CPUs or more), 200 and 0: a sequential
        blocking client in another process gets every reply right; once a reply went out the
        server polls before it sleeps, and at 200 us most polls find the next request; with it
        off nothing polls."""
        server_script = textwrap.dedent(
            """
            import json, sys, grenache

            def handler(payload, info):
                return payload + 1

            link = grenache.Link("http://127.0.0.1:1")
            s = grenache.Server(link, handler, transport="ws")
            print(s.port, flush=True)
            sys.stdin.readline()
            print(json.dumps([s._s._lf_sockets(), grenache._native._poll_us(), grenache._native._lf_spin_stats()]), flush=True)
            s.close()
            link.close()
            """
        )
        client_script = textwrap.dedent(
            """
            import sys, grenache

            link = grenache.Link("http://127.0.0.1:1")
            c = grenache.Client(link, transport="ws")
            dest = "127.0.0.1:" + sys.argv[1]
            for i in range(2000):
                assert c.request("x", i, dest=dest, timeout=10) == i + 1, i
            c.close()
            link.close()
            """
        )
        for poll in (None, "200", "0"):
            with self.subTest(poll_us=poll):
                _, (sockets, budget, (spins, hits)) = server_and_client(self, server_script, client_script, poll)
                self.assertIsNotNone(sockets, "the plain handler's sockets are on its threads")
                if poll is None:
                    self.assertIn(budget, (0, 50 if len(os.sched_getaffinity(0)) >= 2 else 0))
                else:
                    self.assertEqual(budget, int(poll))
                if budget == 0:
                    self.assertEqual((spins, hits), (0, 0))
                    continue
                self.assertGreater(spins, 0, "the server polls after its replies")
                if poll == "200":
                    # At 50 us a debug build's client may be slower than that between two requests.
                    self.assertGreater(hits, spins / 2, f"most polls find the next request: {spins}, {hits}")


if __name__ == "__main__":
    unittest.main()
