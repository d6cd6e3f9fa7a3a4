"""The reference README's `rpc_test` in Python: two Grapes, a worker that answers "world" to
"hello", a client that finds it through the other Grape (and asks every worker with map),
then a PUB/SUB round. Everything on free ports in this process.

    python examples/python/rpc_test.py      (after `pip install ./bindings/python`)
"""

import queue
import time

import grenache


def main() -> None:
    with grenache.Grape() as g1, grenache.Grape(bootstrap=[f"127.0.0.1:{g1.dht_port}"]) as g2:
        print(f"grapes: api {g1.api_port} and {g2.api_port}")
        with grenache.Link(g1.url) as worker_link, grenache.Link(g2.url) as client_link:

            def on_request(payload, info):
                if payload != "hello":
                    raise grenache.ReplyError("ERR_UNKNOWN_REQUEST")
                return "world"

            with grenache.Server(worker_link, on_request, transport="ws") as server:
                server.start_announcing("rpc_test", interval=1.0)
                with grenache.Client(client_link, transport="ws") as client:
                    reply = None
                    for _ in range(100):  # until the announce is visible
                        try:
                            reply = client.request("rpc_test", "hello", timeout=10)
                            break
                        except grenache.LookupEmptyError:
                            time.sleep(0.1)
                    print("rpc_test hello ->", reply)
                    assert reply == "world"
                    print("map ->", client.map("rpc_test", "hello"))
                    try:
                        client.request("rpc_test", "bye")
                    except grenache.RemoteError as e:
                        print("rpc_test bye -> error", e.message)

            got: "queue.Queue[str]" = queue.Queue()
            with grenache.Publisher(worker_link) as pub:
                pub.start_announcing("ticker", interval=1.0)
                with grenache.Subscriber(client_link, "ticker", lambda msg, frm: got.put(msg)):
                    message = None
                    for i in range(200):
                        pub.publish({"tick": i})
                        try:
                            message = got.get(timeout=0.05)
                            break
                        except queue.Empty:
                            pass
                    print("subscriber got", message)
                    assert message is not None
    print("rpc_test.py: ok")


if __name__ == "__main__":
    main()
