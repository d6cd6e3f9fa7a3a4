"""Tests of blocking WS requests sent and answered on the caller's own thread (a plain socket of
the client's, no library thread in the way): replies reach their own caller, errors and
timeouts are those of the library's path, a socket whose call did not end cleanly is never
reused, and closing the client or Ctrl-C ends a waiting call promptly. Real Grapes, servers and
clients on loopback (free ports).

Run: python -m unittest discover -s bindings/python/tests -v   (after `maturin develop`)
"""

import os
import subprocess
import sys
import textwrap
import threading
import time
import unittest

import grenache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_grenache import eventually, interrupt_blocking_call


def handler(payload, info):
    if payload == "fail":
        raise grenache.ReplyError("ERR_BOOM")
    if isinstance(payload, dict) and "sleep" in payload:
        time.sleep(payload["sleep"])
        return payload.get("v")
    return payload


def warm(client, dest, deadline=10.0):
    """Requests until one went on the caller's thread (its socket is dialled in the background
    after the first request found none)."""
    end = time.monotonic() + deadline
    while client._c._direct_sent() == 0:
        if time.monotonic() > end:
            raise AssertionError("no request went on the caller's thread")
        client.request("direct", "warm", dest=dest)
        time.sleep(0.01)


class DirectTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.grape = grenache.Grape(host="127.0.0.1")
        cls.grape2 = grenache.Grape(bootstrap=[f"127.0.0.1:{cls.grape.dht_port}"], host="127.0.0.1")
        cls.link = grenache.Link(cls.grape.url)
        cls.server = grenache.Server(cls.link, handler, transport="ws")
        cls.dest = f"127.0.0.1:{cls.server.port}"

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.link.close()
        cls.grape2.stop()
        cls.grape.stop()

    def client(self):
        c = grenache.Client(self.link, transport="ws")
        self.addCleanup(c.close)
        return c

    def test_sequential_requests_go_on_the_callers_thread(self):
        c = self.client()
        warm(c, self.dest)
        before = c._c._direct_sent()
        for i in range(500):
            self.assertEqual(c.request("direct", {"i": i, "s": "é" * (i % 7)}, dest=self.dest), {"i": i, "s": "é" * (i % 7)})
        self.assertGreaterEqual(c._c._direct_sent() - before, 500)

    def test_looked_up_service_goes_on_the_callers_thread(self):
        """Without ``dest``: the cached lookup picks the worker, as on the library's path."""
        self.server.start_announcing("direct:svc", 0.2)
        c = self.client()
        end = time.monotonic() + 20
        while c._c._direct_sent() == 0:
            self.assertLess(time.monotonic(), end, "no request went on the caller's thread")
            try:
                self.assertEqual(c.request("direct:svc", "x", timeout=2), "x")
            except grenache.LookupEmptyError:
                time.sleep(0.1)
            time.sleep(0.01)
        for i in range(50):
            self.assertEqual(c.request("direct:svc", i), i)
        self.server.stop_announcing("direct:svc")

    def test_threads_each_get_their_own_reply(self):
        c = self.client()
        warm(c, self.dest)
        before = c._c._direct_sent()
        errors = []

        def run(t):
            try:
                for i in range(200):
                    got = c.request("direct", [t, i], dest=self.dest)
                    if got != [t, i]:
                        errors.append((t, i, got))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((t, repr(e)))

        threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        # Sockets for the other threads are dialled while their first calls take the library's
        # path: most calls still go on their caller's thread.
        self.assertGreater(c._c._direct_sent() - before, 800)

    def test_remote_error_timeout_then_a_fresh_socket(self):
        c = self.client()
        warm(c, self.dest)
        with self.assertRaises(grenache.RemoteError) as e:
            c.request("direct", "fail", dest=self.dest)
        self.assertEqual(e.exception.message, "ERR_BOOM")
        # A remote error is an answer: the socket stays in use.
        sent = c._c._direct_sent()
        self.assertEqual(c.request("direct", 1, dest=self.dest), 1)
        self.assertEqual(c._c._direct_sent(), sent + 1)
        t0 = time.monotonic()
        with self.assertRaises(grenache.TimeoutError) as e:
            c.request("direct", {"sleep": 1.0, "v": "late"}, dest=self.dest, timeout=0.2)
        self.assertLess(time.monotonic() - t0, 0.9)
        self.assertIn("no reply within", e.exception.message)
        # The timed-out socket was closed: the late reply reaches nobody, later calls get their own.
        for i in range(20):
            self.assertEqual(c.request("direct", i, dest=self.dest), i)
        time.sleep(1.0)
        for i in range(20):
            self.assertEqual(c.request("direct", i, dest=self.dest), i)

    def test_client_closed_while_a_call_waits(self):
        c = grenache.Client(self.link, transport="ws")
        warm(c, self.dest)
        out = {}

        def call():
            t0 = time.monotonic()
            try:
                out["result"] = c.request("direct", {"sleep": 3.0, "v": 1}, dest=self.dest, timeout=10)
            except grenache.GrenacheError as e:
                out["error"] = e
            out["took"] = time.monotonic() - t0

        sent = c._c._direct_sent()
        t = threading.Thread(target=call)
        t.start()
        eventually(lambda: c._c._direct_sent() == sent + 1, what="the call is sent")
        time.sleep(0.1)  # and waits for its reply
        c.close()
        t.join(10)
        self.assertIsInstance(out.get("error"), grenache.CancelledError, out)
        self.assertLess(out["took"], 2.0)

    def test_server_gone_mid_request_fails_at_once(self):
        """A worker process that dies while a call waits on its socket: ClosedError at once,
        not a timeout; a closed idle socket is noticed before it is used."""
        script = textwrap.dedent(
            """
            import os, sys, grenache
            def h(payload, info):
                if payload == "die":
                    os._exit(3)
                return payload
            link = grenache.Link(sys.argv[1])
            s = grenache.Server(link, h, transport="ws")
            print(s.port, flush=True)
            sys.stdin.read()
            """
        )
        p = subprocess.Popen([sys.executable, "-c", script, self.grape.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            dest = f"127.0.0.1:{int(p.stdout.readline())}"
            c = self.client()
            warm(c, dest)
            sent = c._c._direct_sent()
            t0 = time.monotonic()
            with self.assertRaises(grenache.ClosedError):
                c.request("direct", "die", dest=dest, timeout=20)
            self.assertLess(time.monotonic() - t0, 5.0)
            self.assertEqual(c._c._direct_sent(), sent + 1)
            p.wait(10)
            # Nothing listens there now: the library's path reports it (once its own socket to
            # the dead worker, if it had one, was seen closed).
            for _ in range(20):
                try:
                    c.request("direct", 1, dest=dest, timeout=5)
                    self.fail("a dead worker answered")
                except grenache.ConnectError:
                    break
                except grenache.ClosedError:
                    time.sleep(0.05)
            else:
                self.fail("no ConnectError")
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdin.close()
            p.stdout.close()

    def test_idle_socket_closed_by_the_server_is_not_used(self):
        server = grenache.Server(self.link, handler, transport="ws")
        dest = f"127.0.0.1:{server.port}"
        c = self.client()
        warm(c, dest)
        server.close()
        time.sleep(0.2)
        sent = c._c._direct_sent()
        with self.assertRaises(grenache.ConnectError):
            c.request("direct", 1, dest=dest, timeout=5)
        self.assertEqual(c._c._direct_sent(), sent)

    def test_other_transports_and_options_take_the_library_path(self):
        c = self.client()
        warm(c, self.dest)
        sent = c._c._direct_sent()
        # Several attempts: the library's retry loop.
        self.assertEqual(c.request("direct", 1, dest=self.dest, retry=3), 1)
        # A payload that is not JSON is refused as before.
        with self.assertRaises(grenache.InvalidArgumentError):
            c._c.request("direct", "{not json", None, 0, False, self.dest)
        self.assertEqual(c._c._direct_sent(), sent)
        server = grenache.Server(self.link, handler, transport="http")
        try:
            with grenache.Client(self.link, transport="http") as h:
                for i in range(5):
                    self.assertEqual(h.request("direct", i, dest=f"127.0.0.1:{server.port}"), i)
                self.assertEqual(h._c._direct_sent(), 0)
        finally:
            server.close()

    def test_switched_off_by_the_environment(self):
        script = textwrap.dedent(
            """
            import sys, time, grenache
            with grenache.Grape(host="127.0.0.1") as grape, grenache.Link(grape.url) as link:
                s = grenache.Server(link, lambda p, i: p, transport="ws")
                c = grenache.Client(link, transport="ws")
                for i in range(200):
                    assert c.request("x", i, dest=f"127.0.0.1:{s.port}") == i
                    time.sleep(0.001)
                print(c._c._direct_sent(), flush=True)
                c.close()
                s.close()
            """
        )
        for value, on in (("0", False), ("1", True)):
            with self.subTest(value=value):
                env = dict(os.environ, GRENACHE_PYTHON_DIRECT=value)
                out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
                self.assertEqual(out.returncode, 0, out.stderr[-2000:])
                self.assertEqual(int(out.stdout) > 0, on, out.stdout)

    def test_ctrl_c_interrupts_a_call_on_the_callers_thread(self):
        script = textwrap.dedent(
            """
            import signal, sys, threading, time, grenache
            signal.signal(signal.SIGINT, signal.default_int_handler)
            release = threading.Event()
            def h(payload, info):
                if payload == "hold":
                    release.wait(60)
                return payload
            with grenache.Grape(host="127.0.0.1") as grape, grenache.Link(grape.url) as link:
                server = grenache.Server(link, h, transport="ws")
                client = grenache.Client(link, transport="ws")
                dest = f"127.0.0.1:{server.port}"
                while client._c._direct_sent() == 0:
                    client.request("x", 1, dest=dest)
                    time.sleep(0.01)
                sent = client._c._direct_sent()
                print("waiting", flush=True)
                t0 = time.monotonic()
                try:
                    client.request("x", "hold", dest=dest, timeout=60)
                    print("answered", flush=True)
                except KeyboardInterrupt:
                    print(f"interrupted {time.monotonic() - t0:.3f} {client._c._direct_sent() - sent}", flush=True)
                release.set()
                # The interrupted call's socket is not reused: this reply is this call's.
                assert client.request("x", 2, dest=dest) == 2
                client.close()
                server.close()
            """
        )
        out, code = interrupt_blocking_call(script)
        words = out.split()
        self.assertEqual(words[0], "interrupted", out)
        self.assertLess(float(words[1]), 5.0)
        self.assertEqual(words[2], "1", "the held call went on the caller's thread")
        self.assertEqual(code, 0)


if __name__ == "__main__":
    unittest.main()
