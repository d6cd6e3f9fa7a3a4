"""Do a server's plain handlers run in parallel? CPU-bound handlers under concurrent load.

    bash bench/python/parallel.sh       # builds the module for each interpreter, runs this
    python bench/python/parallel.py     # with grenache installed in this interpreter

One process: two Grapes, a WS server whose plain handler burns CPU in pure Python (about
--work-ms of it per request, calibrated at start), and --threads blocking client threads that
call it until --requests replies came back. Prints one JSON line: requests per second, and
"handler parallelism": the CPU seconds the handlers spent (`time.thread_time` inside each call)
per wall second of the run. Under the GIL that stays at or below 1 whatever the cores; on a
free-threaded interpreter the server's pool runs one handler per core at once, so it approaches
the number of cores a quiet machine has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time


def burn(n: int) -> int:
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1000003
    return acc


def calibrate(work_ms: float) -> int:
    """Loop count of `burn` that takes about `work_ms` of CPU on this thread."""
    n = 10_000
    while True:
        t0 = time.thread_time()
        burn(n)
        spent = time.thread_time() - t0
        if spent > 0.02:
            return max(1, int(n * work_ms / 1000 / spent))
        n *= 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-ms", type=float, default=2.0)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()

    import grenache

    loops = calibrate(args.work_ms)
    cpu = [0.0]
    cpu_lock = threading.Lock()

    def handler(payload, info):
        t0 = time.thread_time()
        r = burn(loops)
        spent = time.thread_time() - t0
        with cpu_lock:
            cpu[0] += spent
        return r

    with grenache.Grape(host="127.0.0.1") as g1, grenache.Grape(host="127.0.0.1", bootstrap=[f"127.0.0.1:{g1.dht_port}"]) as g2:
        link = grenache.Link(g1.url)
        server = grenache.Server(link, handler, transport="ws")
        name = f"parallel_{os.getpid()}"
        server.start_announcing(name, 1.0)
        client = grenache.Client(grenache.Link(g2.url), transport="ws")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.request(name, 0)
                break
            except grenache.LookupEmptyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        left = [args.requests]
        left_lock = threading.Lock()
        errors = []

        def caller() -> None:
            while True:
                with left_lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                try:
                    client.request(name, 0, timeout=60.0)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))
                    return

        with cpu_lock:
            cpu[0] = 0.0
        t0 = time.perf_counter()
        threads = [threading.Thread(target=caller) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        server.close()
        client.close()

    gil = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
    print(json.dumps({
        "python": sys.version.split()[0],
        "gil": gil,
        "parallel_handlers": grenache._native._parallel_handlers(),
        "cpus": os.cpu_count(),
        "work_ms": args.work_ms,
        "requests": args.requests,
        "rps": round(args.requests / wall, 1),
        "handler_parallelism": round(cpu[0] / wall, 2),
        "errors": errors[:3],
    }), flush=True)
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[:3]}")


if __name__ == "__main__":
    main()
