"""Tests of the batched paths of the Python binding: asyncio results and ``async def`` requests
handed to the event loop in batches, plain handlers run by a pool that answers queued requests
in a row, and blocking calls that poll before they sleep. Real Grapes, servers and clients on
loopback (free ports).

Run: python -m unittest discover -s bindings/python/tests -v   (after `maturin develop`)
"""

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import weakref

import grenache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_grenache import interrupt_blocking_call

TRANSPORTS = ("http", "ws")


def server_and_client(case, server_script, client_script, poll):
    """Runs ``server_script`` (prints its port, then one line of JSON after a line on stdin) and
    ``client_script PORT`` in two processes with GRENACHE_PYTHON_POLL_US set to ``poll`` (None:
    unset, the default); returns the client's stdout and the server's JSON."""
    env = dict(os.environ)
    env.pop("GRENACHE_PYTHON_POLL_US", None)
    if poll is not None:
        env["GRENACHE_PYTHON_POLL_US"] = poll
    server = subprocess.Popen([sys.executable, "-c", server_script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().strip()
        case.assertTrue(port.isdigit(), port)
        client = subprocess.run([sys.executable, "-c", client_script, port], env=env, capture_output=True, text=True, timeout=120)
        case.assertEqual(client.returncode, 0, client.stderr[-2000:])
        server_out, _ = server.communicate("stop\n", timeout=30)
        return client.stdout, json.loads(server_out)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def echo(payload, info):
    return payload


async def async_echo(payload, info):
    if isinstance(payload, dict) and payload.get("yield"):
        await asyncio.sleep(0)
    return payload


class BatchingTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.grape = grenache.Grape(host="127.0.0.1")
        cls.link = grenache.Link(cls.grape.url)
        cls.servers = {t: grenache.Server(cls.link, echo, transport=t) for t in TRANSPORTS}
        cls.clients = {t: grenache.Client(cls.link, transport=t) for t in TRANSPORTS}

    @classmethod
    def tearDownClass(cls):
        for c in cls.clients.values():
            c.close()
        for s in cls.servers.values():
            s.close()
        cls.link.close()
        cls.grape.stop()

    def dest(self, server):
        return f"127.0.0.1:{server.port}"

    def test_asyncio_results_keep_order_per_request(self):
        """Thousands of results delivered in batches: every future gets its own request's
        result, and each of 50 sequential chains sees its results in its own order."""

        async def main(t):
            c, dest = self.clients[t], self.dest(self.servers[t])
            many = await asyncio.gather(*[c.request_async("x", {"i": i}, dest=dest, timeout=30) for i in range(2000)])
            self.assertEqual([m["i"] for m in many], list(range(2000)))

            async def chain(k):
                got = []
                for j in range(40):
                    got.append((await c.request_async("x", [k, j], dest=dest, timeout=30))[1])
                return k, got

            for k, got in await asyncio.gather(*[chain(k) for k in range(50)]):
                self.assertEqual(got, list(range(40)), f"chain {k}")
            # Errors and results share the batches and stay with their requests.
            mixed = await asyncio.gather(
                *[c.request_async("x", i, dest=dest, timeout=30) if i % 3 else c.request_async("x", i, dest="127.0.0.1:1", timeout=30) for i in range(300)],
                return_exceptions=True,
            )
            for i, m in enumerate(mixed):
                if i % 3:
                    self.assertEqual(m, i)
                else:
                    self.assertIsInstance(m, grenache.TransportError, f"request {i}")

        for t in TRANSPORTS:
            with self.subTest(transport=t):
                asyncio.run(main(t))

    def test_asyncio_requests_of_one_turn_keep_their_options_and_callers(self):
        """Requests issued in the same loop iteration are handed to the library together: each keeps
        its own destination, timeout and decoding, and its result goes to its own caller, also
        across two clients and both transports in one batch."""
        slow_release = threading.Event()

        def slow(payload, info):
            slow_release.wait(20)
            return payload

        slow_server = grenache.Server(self.link, slow, transport="ws")
        other = {t: grenache.Client(self.link, transport=t) for t in TRANSPORTS}

        async def main():
            calls = []
            for i in range(600):
                t = TRANSPORTS[i % 2]
                client = self.clients[t] if i % 3 else other[t]
                if i % 50 == 7:
                    # A short timeout against a handler that does not answer in time.
                    calls.append(self.clients["ws"].request_async("x", i, dest=self.dest(slow_server), timeout=0.3))
                else:
                    calls.append(client.request_async("x", {"i": i, "s": " \u00e9 "}, dest=self.dest(self.servers[t]), timeout=30))
            got = await asyncio.gather(*calls, return_exceptions=True)
            for i, g in enumerate(got):
                if i % 50 == 7:
                    self.assertIsInstance(g, grenache.TimeoutError, f"request {i}")
                else:
                    self.assertEqual(g, {"i": i, "s": " \u00e9 "}, f"request {i}")

        try:
            asyncio.run(main())
        finally:
            slow_release.set()
            for c in other.values():
                c.close()
            slow_server.close()

    def test_client_close_cancels_queued_and_in_flight_asyncio_requests(self):
        """``Client.close()`` in the loop iteration that issued requests (some maybe not yet handed
        to the library, others in flight at a handler that blocks): every one fails with
        ``CancelledError`` at once, none waits for its timeout; later requests fail the same."""
        for t in TRANSPORTS:
            with self.subTest(transport=t):
                release = threading.Event()

                def handler(payload, info):
                    release.wait(20)
                    return payload

                s = grenache.Server(self.link, handler, transport=t)
                c = grenache.Client(self.link, transport=t)
                try:
                    dest = self.dest(s)

                    async def main():
                        early = [asyncio.ensure_future(c.request_async("x", i, dest=dest, timeout=30)) for i in range(50)]
                        await asyncio.sleep(0.3)  # these are at the handler now
                        late = [asyncio.ensure_future(c.request_async("x", i, dest=dest, timeout=30)) for i in range(300)]
                        await asyncio.sleep(0)  # their first step ran: they are queued or sent
                        t0 = time.monotonic()
                        c.close()
                        got = await asyncio.wait_for(asyncio.gather(*early, *late, return_exceptions=True), 10)
                        self.assertLess(time.monotonic() - t0, 5)
                        for i, g in enumerate(got):
                            self.assertIsInstance(g, grenache.CancelledError, f"request {i}")
                        with self.assertRaises(grenache.CancelledError):
                            await asyncio.wait_for(c.request_async("x", 1, dest=dest, timeout=30), 10)

                    asyncio.run(main())
                finally:
                    release.set()
                    c.close()
                    s.close()

    def test_async_def_requests_keep_order_per_request(self):
        """Requests for an ``async def`` handler reach its loop in batches; each is answered
        with its own result, whether the handler waits or not."""

        async def main(t):
            s = grenache.Server(self.link, async_echo, transport=t)
            try:
                c, dest = self.clients[t], self.dest(s)
                payloads = [{"i": i, "yield": i % 2 == 0} for i in range(1000)]
                many = await asyncio.gather(*[c.request_async("x", p, dest=dest, timeout=30) for p in payloads])
                self.assertEqual(many, payloads)
            finally:
                s.close()

        for t in TRANSPORTS:
            with self.subTest(transport=t):
                asyncio.run(main(t))

    def test_plain_handler_pool_takes_over_from_a_blocking_handler(self):
        """Three requests whose handlers each wait for the other two (a barrier): they pass only
        if the pool runs them at once, i.e. another thread took the queue over when a handler
        blocked."""
        barrier = threading.Barrier(3, timeout=20)

        def handler(payload, info):
            if payload == "wait":
                barrier.wait()
                return "passed"
            return payload

        for t in TRANSPORTS:
            with self.subTest(transport=t):
                barrier.reset()
                s = grenache.Server(self.link, handler, transport=t)
                try:
                    c, dest = self.clients[t], self.dest(s)

                    async def main():
                        waits = [c.request_async("x", "wait", dest=dest, timeout=30) for _ in range(3)]
                        fast = [c.request_async("x", i, dest=dest, timeout=30) for i in range(100)]
                        return await asyncio.gather(*waits, *fast)

                    got = asyncio.run(main())
                    self.assertEqual(got, ["passed"] * 3 + list(range(100)))
                finally:
                    s.close()

    def test_blocking_handlers_run_at_once_after_the_pool_went_idle(self):
        """Five handlers that each sleep 0.5 s, called at once (five threads, then five
        asyncio requests on one socket), take about 0.5 s in every round, also once the pool's
        threads went idle after an earlier round; on both WS paths (handler threads reading
        their sockets, and the library's I/O threads) and over HTTP."""

        def handler(payload, info):
            time.sleep(0.5)
            return payload

        for t, in_loop in (("ws", True), ("ws", False), ("http", False)):
            with self.subTest(transport=t, in_loop=in_loop):
                s = grenache.Server(self.link, handler, transport=t, in_loop=in_loop)
                try:
                    c, dest = self.clients[t], self.dest(s)
                    self.assertEqual(s._s._lf_sockets() is not None, in_loop)
                    for _ in range(3):
                        out = []
                        t0 = time.monotonic()
                        threads = [threading.Thread(target=lambda i=i: out.append(c.request("x", i, dest=dest, timeout=30))) for i in range(5)]
                        for th in threads:
                            th.start()
                        for th in threads:
                            th.join(30)
                        self.assertEqual(sorted(out), list(range(5)))
                        self.assertLess(time.monotonic() - t0, 2.0, "the handlers ran one after another")

                        async def main():
                            return await asyncio.gather(*[c.request_async("x", i, dest=dest, timeout=30) for i in range(5)])

                        t0 = time.monotonic()
                        self.assertEqual(asyncio.run(main()), list(range(5)))
                        self.assertLess(time.monotonic() - t0, 2.0, "the handlers ran one after another")
                        time.sleep(0.3)
                finally:
                    s.close()

    def test_loop_closed_with_results_pending_loses_nothing(self):
        """Results that arrive for a loop that was shut down are dropped (nobody waits for
        them) without errors; the server answered every request; the next loop gets all of its
        results."""
        for t in TRANSPORTS:
            with self.subTest(transport=t):
                release = threading.Event()
                answered = []

                def handler(payload, info):
                    release.wait(20)
                    answered.append(payload)
                    return payload

                s = grenache.Server(self.link, handler, transport=t)
                c = grenache.Client(self.link, transport=t)
                try:
                    dest = self.dest(s)
                    loop = asyncio.new_event_loop()
                    tasks = [loop.create_task(c.request_async("x", i, dest=dest, timeout=30)) for i in range(200)]
                    loop.run_until_complete(asyncio.sleep(0.2))
                    self.assertFalse(any(task.done() for task in tasks))
                    inbox = grenache._results_by_loop[loop]().inbox
                    # What asyncio.run does at its end: cancel the tasks, shut the async
                    # generators down, close.
                    for task in tasks:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.close()
                    self.assertTrue(inbox.closed, "the loop's inbox closed with it")
                    release.set()
                    deadline = time.monotonic() + 20
                    while len(answered) < 200 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    self.assertEqual(sorted(answered), list(range(200)), "the server answered every request")

                    # A loop closed by hand (no shutdown) and dropped with requests in flight:
                    # once their results came (and were dropped), nothing keeps the loop, its
                    # inbox or its futures alive.
                    release.clear()
                    answered.clear()
                    loop = asyncio.new_event_loop()
                    tasks = [loop.create_task(c.request_async("x", i, dest=dest, timeout=30)) for i in range(20)]
                    loop.run_until_complete(asyncio.sleep(0.1))
                    box = weakref.ref(grenache._results_by_loop[loop]())
                    gone = weakref.ref(loop)
                    for task in tasks:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                    loop.close()
                    del loop, tasks, task
                    release.set()
                    deadline = time.monotonic() + 20
                    while (gone() is not None or box() is not None) and time.monotonic() < deadline:
                        grenache.version()  # a call into the module frees what library threads dropped
                        gc.collect()
                        time.sleep(0.05)
                    self.assertIsNone(gone(), "the closed loop was freed")
                    self.assertIsNone(box(), "its inbox was freed")
                    self.assertEqual(sorted(answered), list(range(20)))

                    async def again():
                        return await asyncio.gather(*[c.request_async("x", i, dest=dest, timeout=30) for i in range(200)])

                    self.assertEqual(asyncio.run(again()), list(range(200)))
                finally:
                    release.set()
                    c.close()
                    s.close()

    def test_server_loop_shut_down_with_requests_pending_answers_every_client(self):
        """An ``async def`` server whose loop ends (asyncio.run returns) while requests are
        running or still queued: every client gets ``ERR_NO_REPLY`` (none waits for its
        timeout), and so does a request sent afterwards."""
        for t in TRANSPORTS:
            with self.subTest(transport=t):
                started = threading.Event()
                holder = {}

                async def handler(payload, info):
                    if payload == 0:
                        # Keep the loop busy so that the next requests queue up in the inbox.
                        started.set()
                        time.sleep(0.3)
                    await asyncio.sleep(60)
                    return payload

                async def server_main():
                    holder["server"] = grenache.Server(self.link, handler, transport=t)
                    holder["ready"].set()
                    while not started.is_set():
                        await asyncio.sleep(0.01)

                holder["ready"] = threading.Event()
                results = {}
                c = grenache.Client(self.link, transport=t)

                def call(i):
                    try:
                        results[i] = c.request("x", i, dest=self.dest(holder["server"]), timeout=30)
                    except Exception as e:
                        results[i] = e

                runner = threading.Thread(target=lambda: asyncio.run(server_main()))
                runner.start()
                try:
                    self.assertTrue(holder["ready"].wait(20))
                    first = threading.Thread(target=call, args=(0,))
                    first.start()
                    self.assertTrue(started.wait(20))
                    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 30)]
                    for th in rest:
                        th.start()
                    runner.join(30)
                    for th in [first, *rest]:
                        th.join(30)
                    self.assertEqual(sorted(results), list(range(30)))
                    # ERR_NO_REPLY travels as the remote error's text, as the reference's does.
                    for i, r in results.items():
                        self.assertIsInstance(r, grenache.RemoteError, f"request {i}: {r!r}")
                        self.assertEqual(r.message, "ERR_NO_REPLY", f"request {i}")
                    with self.assertRaises(grenache.RemoteError) as e:
                        c.request("x", "late", dest=self.dest(holder["server"]), timeout=30)
                    self.assertEqual(e.exception.message, "ERR_NO_REPLY")
                finally:
                    c.close()
                    if "server" in holder:
                        holder["server"].close()

    def test_blocking_calls_poll_then_sleep(self):
        """Sequential blocking calls, fast and slow, with waits that sleep at once (the default)
        and with waits that poll first (GRENACHE_PYTHON_POLL_US, read once per process: run in
        a child), all get their own result."""
        script = textwrap.dedent(
            """
            import sys, time, grenache

            def handler(payload, info):
                if isinstance(payload, dict):
                    time.sleep(payload["sleep"])
                    return payload["v"]
                return payload

            with grenache.Grape(host="127.0.0.1") as grape, grenache.Link(grape.url) as link:
                for t in ("http", "ws"):
                    s = grenache.Server(link, handler, transport=t)
                    c = grenache.Client(link, transport=t)
                    dest = f"127.0.0.1:{s.port}"
                    for i in range(300):
                        assert c.request("x", i, dest=dest) == i
                    for i in range(5):
                        assert c.request("x", {"sleep": 0.02, "v": i}, dest=dest) == i
                        assert c.request("x", i, dest=dest) == i
                    try:
                        c.request("x", {"sleep": 1.0, "v": 0}, dest=dest, timeout=0.2)
                        raise SystemExit("no timeout")
                    except grenache.TimeoutError:
                        pass
                    c.close()
                    s.close()
            print("ok", flush=True)
            """
        )
        for poll in ("0", "50", "1000"):
            with self.subTest(poll_us=poll):
                env = dict(os.environ, GRENACHE_PYTHON_POLL_US=poll)
                out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
                self.assertEqual(out.stdout.strip(), "ok", out.stderr[-2000:])


    def test_asyncio_loops_poll_before_they_sleep(self):
        """GRENACHE_PYTHON_POLL_US on asyncio loops (read once per process: children), set to 200,
        unset (50 us where the process may run on two CPUs or more) and 0: a sequential asyncio
        client and an ``async def`` WS server in two processes get every reply right; the
        client's polls find most replies at 200, and the server's find requests; a client
        that sent nothing since its last fruitless poll does not poll while it waits for a timer
        (one request every 20 ms: at most two polls per request); with it off nothing polls."""
        server_script = textwrap.dedent(
            """
            import asyncio, json, sys, grenache

            async def handler(payload, info):
                return payload + 1

            async def main():
                link = grenache.Link("http://127.0.0.1:1")
                s = grenache.Server(link, handler, transport="ws")
                print(s.port, flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                print(json.dumps(grenache._native._spin_stats()), flush=True)
                s.close()
                link.close()

            asyncio.run(main())
            """
        )
        client_script = textwrap.dedent(
            """
            import asyncio, json, sys, grenache

            async def main():
                link = grenache.Link("http://127.0.0.1:1")
                c = grenache.Client(link, transport="ws")
                dest = "127.0.0.1:" + sys.argv[1]
                for i in range(2000):
                    r = await c.request_async("x", i, dest=dest, timeout=10)
                    assert r == i + 1, (i, r)
                busy = grenache._native._spin_stats()
                for i in range(30):  # sparse: one request every 20 ms
                    assert await c.request_async("x", i, dest=dest, timeout=10) == i + 1
                    await asyncio.sleep(0.02)
                spins, _ = grenache._native._spin_stats()
                print(json.dumps({"busy": busy, "sparse_spins": spins - busy[0], "budget": grenache._native._poll_us()}), flush=True)
                c.close()
                link.close()

            asyncio.run(main())
            """
        )
        for poll in ("200", None, "0"):
            with self.subTest(poll_us=poll):
                client_out, (server_spins, server_hits) = server_and_client(self, server_script, client_script, poll)
                out = json.loads(client_out)
                (spins, hits), sparse = out["busy"], out["sparse_spins"]
                if poll is None:
                    # 50 us by default, where the process may run on two CPUs or more.
                    expected = 50 if len(os.sched_getaffinity(0)) >= 2 else 0
                    self.assertIn(out["budget"], (0, expected), out)
                else:
                    self.assertEqual(out["budget"], int(poll), out)
                if out["budget"] == 0:
                    self.assertEqual((spins, hits, sparse, server_spins, server_hits), (0, 0, 0, 0, 0))
                    continue
                self.assertGreater(spins, 0, out)
                if poll == "200":
                    self.assertGreater(hits, spins / 2, f"most polls of a sequential client find its reply: {out}")
                self.assertGreater(server_spins, 0, f"the server polls: {server_spins}, {server_hits}")
                if poll == "200":
                    # At 50 us a debug build's client may be slower than that between two requests.
                    self.assertGreater(server_hits, 0, f"the server's polls find requests: {server_spins}, {server_hits}")
                self.assertLessEqual(sparse, 2 * 30 + 4, f"at most two polls per request sent: {out}")

class CtrlCTests(unittest.TestCase):
    def test_ctrl_c_interrupts_a_blocking_call(self):
        """SIGINT during a blocking request that would wait 60 s raises KeyboardInterrupt in
        the caller within seconds."""
        script = textwrap.dedent(
            """
            import signal, sys, threading, time, grenache
            # A child of a shell's background job inherits SIGINT ignored: take it back.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            release = threading.Event()
            def handler(payload, info):
                release.wait(60)
                return payload
            with grenache.Grape(host="127.0.0.1") as grape, grenache.Link(grape.url) as link:
                server = grenache.Server(link, handler, transport=sys.argv[1])
                client = grenache.Client(link, transport=sys.argv[1])
                print("waiting", flush=True)
                t0 = time.monotonic()
                try:
                    client.request("x", 1, dest=f"127.0.0.1:{server.port}", timeout=60)
                    print("answered", flush=True)
                except KeyboardInterrupt:
                    print(f"interrupted {time.monotonic() - t0:.3f}", flush=True)
                release.set()
                client.close()
                server.close()
            """
        )
        for t in TRANSPORTS:
            with self.subTest(transport=t):
                out, code = interrupt_blocking_call(script, t)
                self.assertTrue(out.startswith("interrupted"), out)
                # Promptly: well before the 60 s the call would have waited (the wait wakes
                # every 100 ms to let Python run its signal handler).
                self.assertLess(float(out.split()[1]), 30.0)
                self.assertEqual(code, 0)


if __name__ == "__main__":
    unittest.main()
