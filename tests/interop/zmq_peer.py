"""A libzmq peer (pyzmq) speaking the grenache-rs ZeroMQ frames, for the interop tests.

  python zmq_peer.py dealer PORT   # stdin: {"frames": [...]} per line; prints the reply frames
  python zmq_peer.py req PORT      # the same through a REQ socket
  python zmq_peer.py router        # serves [rid, key, payload]: "fail" -> ERR_BOOM, else an echo
  python zmq_peer.py pub           # XPUB: prints {"event":"subscribed"}; publishes each stdin line
  python zmq_peer.py sub PORT      # prints each message received
  python zmq_peer.py echo          # a bare ROUTER echo (the benchmark's floor server)
  python zmq_peer.py bench PORT SEQ ROUNDS   # a bare DEALER: SEQ sequential round trips, then
                                   # ROUNDS rounds of 100 in flight; prints the figures

Every mode prints JSON lines on stdout (the first one {"event":"started",...}) and exits when
its stdin closes.
"""
import json
import sys

import zmq


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def text(frames):
    return [f.decode("utf-8", "replace") for f in frames]


def main():
    mode = sys.argv[1]
    ctx = zmq.Context()
    poller = zmq.Poller()
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    if mode in ("dealer", "req"):
        s = ctx.socket(zmq.DEALER if mode == "dealer" else zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 10000)
        s.connect("tcp://127.0.0.1:%s" % sys.argv[2])
        out({"event": "started"})
        for line in sys.stdin:
            cmd = json.loads(line)
            s.send_multipart([f.encode() for f in cmd["frames"]])
            try:
                out({"frames": text(s.recv_multipart())})
            except zmq.Again:
                out({"error": "timeout"})
        return
    if mode == "router":
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        out({"event": "started", "port": port})
        poller.register(s, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if sys.stdin.fileno() in ready and not sys.stdin.readline():
                return
            if s in ready:
                ident, rid, key, payload = s.recv_multipart()
                body = json.loads(payload)
                if body == "fail":
                    s.send_multipart([ident, rid, b"ERR_BOOM", b"null"])
                else:
                    result = {"from": "libzmq", "key": key.decode(), "payload": body}
                    s.send_multipart([ident, rid, b"", json.dumps(result).encode()])
    if mode == "pub":
        s = ctx.socket(zmq.XPUB)
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        out({"event": "started", "port": port})
        poller.register(s, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if s in ready:
                m = s.recv()
                out({"event": "subscribed" if m[:1] == b"\x01" else "unsubscribed", "prefix": m[1:].decode()})
            if sys.stdin.fileno() in ready:
                line = sys.stdin.readline()
                if not line:
                    return
                s.send(line.rstrip("\n").encode())
    if mode == "sub":
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect("tcp://127.0.0.1:%s" % sys.argv[2])
        out({"event": "started"})
        poller.register(s, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if sys.stdin.fileno() in ready and not sys.stdin.readline():
                return
            if s in ready:
                out({"event": "message", "frames": text(s.recv_multipart())})
    if mode == "echo":
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        out({"event": "started", "port": port})
        poller.register(s, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if sys.stdin.fileno() in ready and not sys.stdin.readline():
                return
            if s in ready:
                # Everything queued, without going back to the poller in between.
                while True:
                    try:
                        ident, rid, _key, _payload = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    s.send_multipart([ident, rid, b"", b'"world"'])
    if mode == "bench":
        import time
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect("tcp://127.0.0.1:%s" % sys.argv[2])
        seq, rounds = int(sys.argv[3]), int(sys.argv[4])
        req = [b"0123456789abcdef0123456789abcdef0123", b"bench", b'"hello"']
        for _ in range(300):
            s.send_multipart(req)
            s.recv_multipart()
        lat = []
        t0 = time.perf_counter()
        for _ in range(seq):
            a = time.perf_counter()
            s.send_multipart(req)
            s.recv_multipart()
            lat.append(time.perf_counter() - a)
        seq_secs = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(rounds):
            for _ in range(100):
                s.send_multipart(req)
            for _ in range(100):
                s.recv_multipart()
        conc_secs = time.perf_counter() - t0
        lat.sort()
        out({"seq_rps": seq / seq_secs, "seq_p50_us": lat[len(lat) // 2] * 1e6,
             "seq_p99_us": lat[int(len(lat) * 0.99)] * 1e6, "conc_rps": rounds * 100 / conc_secs})
        return
    raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
