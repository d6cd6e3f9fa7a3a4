"""The face contract, Python side: the same cases as contract.rb, contract.js and the C ABI's in
ffi/tests/face_contract.rs, printed as one JSON line each; the test compares the faces' lines.

    python contract.py REFUSED_PORT
"""
import json
import sys
import threading
import time

import grenache

refused_port = sys.argv[1]
second = {}


def handler(payload, info):
    if payload == "twice":
        reply = info.defer()
        reply.send("first")
        try:
            reply.send("second")
        except grenache.GrenacheError as e:
            second["name"] = e.name
        return None
    if payload == "never":
        kept.append(info.defer())
        return None
    if payload == "raise":
        raise RuntimeError("a bug in the handler")
    return "world"


kept = []


def outcome(case, call):
    try:
        row = {"case": case, "result": call()}
    except grenache.GrenacheError as e:
        row = {"case": case, "code": e.code, "name": e.name, "message": e.message}
    return row


def main():
    link = grenache.Link("http://127.0.0.1:1")
    for transport in ("http", "ws"):
        server = grenache.Server(link, handler, transport=transport, reply_timeout=1.0)
        client = grenache.Client(link, transport=transport)
        dest = f"127.0.0.1:{server.port}"
        ask = lambda payload, timeout=5.0: client.request("contract", payload, dest=dest, timeout=timeout)
        rows = [outcome("answers", lambda: ask("hello"))]
        row = outcome("twice", lambda: ask("twice"))
        deadline = time.monotonic() + 5
        while "name" not in second and time.monotonic() < deadline:
            time.sleep(0.01)
        row["second"] = second.pop("name", None)
        rows.append(row)
        rows.append(outcome("never", lambda: ask("never")))
        rows.append(outcome("raises", lambda: ask("raise")))
        rows.append(outcome("timeout", lambda: ask("never", 0.25)))
        rows.append(outcome("refused", lambda: client.request("contract", "hello", dest=f"127.0.0.1:{refused_port}", timeout=5.0)))
        # A salt over 64 bytes, refused before the Grape is asked.
        rows.append(outcome("bad_argument", lambda: link.put_mutable(grenache.Keypair.generate(), "v", 1, salt="s" * 65)))
        print(json.dumps({"server_port": server.port}), flush=True)
        for r in rows:
            r["transport"] = transport
            print(json.dumps(r, sort_keys=True), flush=True)
        client.close()
        server.close()
    link.close()


main()
