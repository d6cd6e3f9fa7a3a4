"""The Python face's RPC benchmark, beside the Node reference and the Rust client, in one run.

    bash bench/python/run.sh            # builds what it needs (release), then runs this
    python bench/python/bench.py        # with grenache installed and the binaries built

Two tables, requests per second (payload "hello", result "world"), sequential and 100 in flight
(rounds of 100 requests that each wait for all, as the Node reference's benchmark clients in
tests/interop do), over WS and HTTP:

* **as client**: each client calls one Rust server (`grenache serve`, release): the Python face
  blocking (sequential only) and asyncio (over WS its requests are written and read on its event
  loop; the last row keeps them on the library's threads, GRENACHE_PYTHON_IN_LOOP=0), the Node
  reference's PeerRPCClient, and the Rust client (`rpc_load`, the ceiling);
* **as server**: the Rust client (`rpc_load`) calls each server: the Python face with a plain
  handler and with an ``async def`` handler (over WS its sockets are read on its event loop; the
  GRENACHE_PYTHON_IN_LOOP=0 row keeps them on the library's threads), the Node
  reference's PeerRPCServer, and the Rust server (`grenache serve`); the floor row is the
  ``async def`` server with each request answered as it is read and no handler called (what the
  event loop and the socket path cost alone, on this interpreter).

Every peer runs in a process of its own (the Python ones too: `--serve`/`--client` below), all
found through two Grapes in this process. By default asyncio loops that drive the package's
sockets poll for up to 50 us before they sleep (after bytes went out on one of them), and
blocking waits do not: the `polling 50 us` row runs the blocking client with
GRENACHE_PYTHON_POLL_US=50 (its waits poll too), the `polling off` rows run the asyncio peers
with GRENACHE_PYTHON_POLL_US=0 (nothing polls).

Each row runs --repeat times (default 3), the rows of a table taking turns, and the tables give
the median of each cell: the machine's speed drifts over minutes, and turns spread the drift
over every row alike. Each server first answers one untimed turn (the Node reference's JIT
warms up over its first thousands of requests). Options: --seq N (sequential requests, default
5000), --rounds R (rounds of 100, default 100), --repeat K, --only client|server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
INTEROP = os.path.join(ROOT, "tests", "interop")
RELEASE = os.path.join(ROOT, "target", "release")
CONC = 100
WARMUP = 300
TRANSPORTS = ("ws", "http")


# ---------------------------------------------------------------------------------------------
# The Python peers (child processes)


def serve(args: argparse.Namespace) -> None:
    import grenache

    link = grenache.Link(args.grape)

    def plain(payload, info):
        return "world" if payload == "hello" else payload

    async def coroutine(payload, info):
        return "world" if payload == "hello" else payload

    if args.handler == "floor":
        # The floor of the `async def` rows: the same server with each request answered as it
        # is read, no handler called (what the event loop and the socket path cost alone).
        def answer_all(self, items):
            for _payload, _fingerprint, native_reply in items:
                native_reply.send('"world"')

        grenache._Calls._run = answer_all

    async def main() -> None:
        handler = coroutine if args.handler in ("async", "floor") else plain
        server = grenache.Server(link, handler, transport=args.transport)
        server.start_announcing(args.name, 1.0)
        print(json.dumps({"event": "started", "port": server.port}), flush=True)
        # Until the parent closes stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())
    link.close()


def client(args: argparse.Namespace) -> None:
    import grenache

    link = grenache.Link(args.grape)
    c = grenache.Client(link, transport=args.transport)
    key = args.key
    out = {}
    if args.mode == "blocking":
        # Sequential only: 100 in flight from blocking calls would take 100 threads.
        for _ in range(WARMUP):
            c.request(key, "hello")
        t0 = time.perf_counter()
        for _ in range(args.seq):
            if c.request(key, "hello") != "world":
                raise SystemExit("bad reply")
        out["seq_rps"] = args.seq / (time.perf_counter() - t0)
    else:

        async def main() -> None:
            req = c.request_async
            for _ in range(WARMUP):
                await req(key, "hello")
            t0 = time.perf_counter()
            for _ in range(args.seq):
                if await req(key, "hello") != "world":
                    raise SystemExit("bad reply")
            out["seq_rps"] = args.seq / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(args.rounds):
                for r in await asyncio.gather(*[req(key, "hello") for _ in range(CONC)]):
                    if r != "world":
                        raise SystemExit("bad reply")
            out["conc_rps"] = args.rounds * CONC / (time.perf_counter() - t0)

        asyncio.run(main())
    c.close()
    link.close()
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver


class Proc:
    """A child process speaking JSON lines on stdout; stopped (stdin closed, then killed) by
    `stop`."""

    def __init__(self, argv, cwd=ROOT, env=None):
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def line(self, timeout=60.0):
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(f"{self.p.args[:3]}: no output within {timeout}s")
            text = self.p.stdout.readline()
            if not text:
                raise RuntimeError(f"{self.p.args[:3]}: exited ({self.p.wait()})")
            text = text.strip()
            if text.startswith("{"):
                return json.loads(text)

    def stop(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
                self.p.wait(timeout=5)
            except Exception:
                self.p.kill()
                self.p.wait()


def run_json(argv, cwd=ROOT, timeout=300.0, env=None):
    p = Proc(argv, cwd, env)
    try:
        v = p.line(timeout)
    finally:
        p.stop()
    if "error" in v:
        raise RuntimeError(f"{argv[:3]}: {v['error']}")
    return v


def wait_visible(link, name, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if link.lookup(name):
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not announced within {timeout}s")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env(kind):
    """The environment of a Python peer: `...-nopoll` kinds never poll before sleeping,
    `...-poll` kinds poll 50 us (blocking waits too), `...-threaded` ones keep an ``async def``
    server's WS sockets on the library's threads."""
    if kind.endswith("-nopoll"):
        return dict(os.environ, GRENACHE_PYTHON_POLL_US="0")
    if kind.endswith("-poll"):
        return dict(os.environ, GRENACHE_PYTHON_POLL_US="50")
    if kind.endswith("-threaded"):
        return dict(os.environ, GRENACHE_PYTHON_IN_LOOP="0")
    return None


def start_server(kind, transport, grape, name):
    """One server of `kind` (python-plain, python-async, node, rust) announcing `name`."""
    if kind.startswith("python"):
        argv = [sys.executable, __file__, "--serve", "--grape", grape, "--name", name, "--transport", transport, "--handler", kind.split("-")[1]]
        return Proc(argv, env=python_env(kind))
    if kind == "node":
        script = "ws_server.js" if transport == "ws" else "http_server.js"
        extra = [] if transport == "ws" else ["--bench"]
        return Proc(["node", script, "--grape", grape, "--name", name, "--port", str(free_port()), *extra], cwd=INTEROP)
    return Proc([os.path.join(RELEASE, "grenache"), "--grape", grape, "serve", name, "--transport", transport, "--reply", '"world"', "--interval", "1000"])


def run_client(kind, transport, grape, key, seq, rounds):
    if kind.startswith("python"):
        argv = [sys.executable, __file__, "--client", "--grape", grape, "--key", key, "--transport", transport, "--mode", kind.split("-")[1], "--seq", str(seq), "--rounds", str(rounds)]
        return run_json(argv, env=python_env(kind))
    if kind == "node":
        script = "ws_bench_client.js" if transport == "ws" else "http_bench.js"
        argv = ["node", script, "--grape", grape, "--key", key, "--warmup", str(WARMUP), "--seq", str(seq), "--rounds", str(rounds), "--conc", str(CONC)]
        return run_json(argv, cwd=INTEROP)
    argv = [os.path.join(RELEASE, "rpc_load"), "--grape", grape, "--key", key, "--transport", transport, "--warmup", str(WARMUP), "--seq", str(seq), "--rounds", str(rounds), "--conc", str(CONC)]
    return run_json(argv)


def median(runs, field):
    """The median of `field` over the runs that have it (None when none has)."""
    values = sorted(v[field] for v in runs if v.get(field) is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt(v):
    return "-" if v is None else f"{v / 1000:.1f}k"


def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(title, rows, names):
    """rows: {kind: {(transport, 'seq'|'conc'): rps}}."""
    cols = [(t, m) for t in TRANSPORTS for m in ("seq", "conc")]
    head = ["WS sequential", "WS 100 in flight", "HTTP sequential", "HTTP 100 in flight"]
    print(f"\n{title}\n")
    print("| " + " | ".join([""] + head) + " |")
    print("|---|" + "---:|" * len(head))
    for kind, label in names:
        print("| " + " | ".join([label] + [fmt(rows[kind].get(c)) for c in cols]) + " |")
    return cols


def ratio_rows(rows, cols, python_kinds, label_of, against, what):
    for kind in python_kinds:
        cells = [ratio(rows[kind].get(c), rows[against].get(c)) for c in cols]
        print("| " + " | ".join([f"{label_of[kind]} / {what}"] + cells) + " |")


def drive(args: argparse.Namespace) -> None:
    import grenache

    missing = [p for p in (os.path.join(RELEASE, "grenache"), os.path.join(RELEASE, "rpc_load")) if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"missing {missing}: cargo build --release -p grenache-cli --bin grenache -p grenache-bench --bin rpc_load")
    if shutil.which("node") is None or not os.path.isdir(os.path.join(INTEROP, "node_modules")):
        raise SystemExit("node and tests/interop/node_modules are needed: (cd tests/interop && npm ci)")
    build = "debug" if grenache._native._debug_build() else "release"
    print(f"grenache {grenache.version()} ({build} build of the Python module: {grenache._native.__file__})")
    print(f"python {sys.version.split()[0]}, node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()}, {os.cpu_count()} CPUs, "
          f"GRENACHE_WORKER_THREADS={os.environ.get('GRENACHE_WORKER_THREADS', 'unset')}; seq {args.seq}, {args.rounds} rounds of {CONC}, "
          f"each row run {args.repeat} times, interleaved (medians)")

    # Two Grapes: an announce needs another DHT node to store it.
    grape = grenache.Grape(host="127.0.0.1")
    grape2 = grenache.Grape(host="127.0.0.1", bootstrap=[f"127.0.0.1:{grape.dht_port}"])
    url = grape.url
    link = grenache.Link(url)
    n = [0]

    def name(prefix):
        n[0] += 1
        return f"bench_{prefix}_{os.getpid()}_{n[0]}"

    try:
        if args.only in (None, "client"):
            kinds = [
                ("python-blocking", "Python face, blocking"),
                ("python-asyncio", "Python face, asyncio"),
                ("node", "Node reference client"),
                ("rust", "Rust client (ceiling)"),
                ("python-blocking-poll", "Python face, blocking, polling 50 us"),
                ("python-asyncio-nopoll", "Python face, asyncio, polling off"),
                ("python-asyncio-threaded", "Python face, asyncio, GRENACHE_PYTHON_IN_LOOP=0"),
            ]
            rows = {k: {} for k, _ in kinds}
            for transport in TRANSPORTS:
                key = name(f"rust_{transport}")
                server = start_server("rust", transport, url, key)
                try:
                    server.line()
                    wait_visible(link, key)
                    runs = {kind: [] for kind, _ in kinds}
                    for r in range(args.repeat):
                        for kind, _ in kinds:
                            v = run_client(kind, transport, url, key, args.seq, args.rounds)
                            runs[kind].append(v)
                            print(f"  client {kind:16} {transport:4} #{r + 1} {json.dumps({k: round(x) for k, x in v.items()})}", flush=True)
                    for kind, _ in kinds:
                        rows[kind][(transport, "seq")] = median(runs[kind], "seq_rps")
                        rows[kind][(transport, "conc")] = median(runs[kind], "conc_rps")
                finally:
                    server.stop()
            cols = table("As client, calling one Rust server (`grenache serve`), req/s:", rows, kinds)
            labels = dict(kinds)
            ratio_rows(rows, cols, ["python-blocking", "python-asyncio", "python-blocking-poll", "python-asyncio-threaded", "python-asyncio-nopoll"], labels, "node", "Node")
            ratio_rows(rows, cols, ["python-blocking", "python-asyncio"], labels, "rust", "Rust")

        if args.only in (None, "server"):
            kinds = [
                ("python-plain", "Python face, plain handler"),
                ("python-async", "Python face, async def handler"),
                ("node", "Node reference server"),
                ("rust", "Rust server (`grenache serve`)"),
                ("python-async-threaded", "Python face, async def handler, GRENACHE_PYTHON_IN_LOOP=0"),
                ("python-floor", "Python face, async def server calling no handler (floor)"),
                ("python-async-nopoll", "Python face, async def handler, polling off"),
            ]
            rows = {k: {} for k, _ in kinds}
            for transport in TRANSPORTS:
                # Every server of the table runs at once (idle but for the one measured), so that
                # their runs interleave.
                servers = {}
                try:
                    for kind, _ in kinds:
                        key = name(f"{kind.replace('-', '_')}_{transport}")
                        servers[kind] = (start_server(kind, transport, url, key), key)
                    for kind, (server, key) in servers.items():
                        server.line()
                        wait_visible(link, key)
                    # One untimed turn first: the Node reference's JIT is still warming up during
                    # the first thousands of requests, and a long-running server is measured.
                    for _, key in servers.values():
                        run_client("rust", transport, url, key, args.seq, args.rounds)
                    runs = {kind: [] for kind, _ in kinds}
                    for r in range(args.repeat):
                        for kind, (server, key) in servers.items():
                            v = run_client("rust", transport, url, key, args.seq, args.rounds)
                            runs[kind].append(v)
                            print(f"  server {kind:16} {transport:4} #{r + 1} {json.dumps({k: round(x) for k, x in v.items()})}", flush=True)
                finally:
                    for server, _ in servers.values():
                        server.stop()
                for kind, _ in kinds:
                    rows[kind][(transport, "seq")] = median(runs[kind], "seq_rps")
                    rows[kind][(transport, "conc")] = median(runs[kind], "conc_rps")
            cols = table("As server, under the Rust client (`rpc_load`), req/s:", rows, kinds)
            labels = dict(kinds)
            ratio_rows(rows, cols, ["python-plain", "python-async", "python-floor", "python-async-nopoll"], labels, "node", "Node")
            ratio_rows(rows, cols, ["python-plain", "python-async"], labels, "rust", "Rust")
    finally:
        link.close()
        grape2.stop()
        grape.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--grape")
    ap.add_argument("--name")
    ap.add_argument("--key")
    ap.add_argument("--transport", default="ws")
    ap.add_argument("--handler", default="plain")
    ap.add_argument("--mode", default="asyncio")
    ap.add_argument("--seq", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--only", choices=("client", "server"))
    ap.add_argument("--repeat", type=int, default=3, help="runs of each row, interleaved; the tables give their medians")
    args = ap.parse_args()
    if args.repeat < 1 or args.seq < 1 or args.rounds < 1:
        ap.error("--repeat, --seq and --rounds take a positive count")
    if args.serve:
        serve(args)
    elif args.client:
        client(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
