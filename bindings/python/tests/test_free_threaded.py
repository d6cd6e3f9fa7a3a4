"""The module on a free-threaded interpreter (CPython 3.14t): importing it keeps the GIL off,
and a server's pool runs plain handlers at once, one per core. Skipped on interpreters with a
GIL (the test command runs this file with a free-threaded build when it can make one:
scripts/cpython314.sh).

Run: python3.14t -m unittest discover -s bindings/python/tests -p 'test_free_threaded.py' -v
"""

import asyncio
import os
import sys
import threading
import time
import unittest

import grenache

FREE_THREADED = hasattr(sys, "_is_gil_enabled") and not sys._is_gil_enabled()


@unittest.skipUnless(FREE_THREADED, "needs a free-threaded interpreter with the GIL off")
class FreeThreadedTests(unittest.TestCase):
    def test_import_keeps_the_gil_off(self):
        """The extension declares it needs no GIL: importing it (done above) did not turn the
        GIL back on, and the server pool runs one handler per core."""
        self.assertFalse(sys._is_gil_enabled())
        self.assertEqual(grenache._native._parallel_handlers(), min(os.cpu_count() or 1, 64))

    def test_handlers_run_at_the_same_time(self):
        """Two requests in flight reach two handler threads at once, neither blocking in a
        way the pool would notice: each handler spins in pure Python (no sleep, no lock wait)
        until it sees the other inside, which needs them to run concurrently; a bounded spin
        keeps a failure from hanging."""
        if (os.cpu_count() or 1) < 2:
            self.skipTest("one core")
        inside = [0]
        lock = threading.Lock()
        threads = set()

        def handler(payload, info):
            with lock:
                inside[0] += 1
                threads.add(threading.get_ident())
            deadline = time.monotonic() + 10
            met = False
            while time.monotonic() < deadline:
                if inside[0] >= 2:
                    met = True
                    break
            return met

        with grenache.Grape(host="127.0.0.1") as grape:
            link = grenache.Link(grape.url)
            server = grenache.Server(link, handler, transport="ws")
            client = grenache.Client(link, transport="ws")
            dest = f"127.0.0.1:{server.port}"

            async def both():
                return await asyncio.gather(*[client.request_async("ft", i, dest=dest, timeout=30) for i in range(2)])

            try:
                self.assertEqual(asyncio.run(both()), [True, True])
                self.assertEqual(len(threads), 2)
            finally:
                client.close()
                server.close()
                link.close()

    def test_many_handlers_in_parallel_keep_every_reply(self):
        """Thousands of requests over both transports from many threads: every reply is its
        own request's, with handlers running on several threads at once."""
        seen = set()
        lock = threading.Lock()

        def echo(payload, info):
            with lock:
                seen.add(threading.get_ident())
            return payload

        with grenache.Grape(host="127.0.0.1") as grape:
            link = grenache.Link(grape.url)
            for transport in ("ws", "http"):
                server = grenache.Server(link, echo, transport=transport)
                client = grenache.Client(link, transport=transport)
                dest = f"127.0.0.1:{server.port}"
                bad = []

                def call(base):
                    for i in range(200):
                        v = {"n": base * 1000 + i}
                        if client.request("ft", v, dest=dest, timeout=30) != v:
                            bad.append(v)

                try:
                    callers = [threading.Thread(target=call, args=(k,)) for k in range(8)]
                    for t in callers:
                        t.start()
                    for t in callers:
                        t.join(120)
                    self.assertFalse(any(t.is_alive() for t in callers))
                    self.assertEqual(bad, [])
                finally:
                    client.close()
                    server.close()
            link.close()


if __name__ == "__main__":
    unittest.main()
