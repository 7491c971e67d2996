#!/usr/bin/env python3
"""What the management API's listings cost with many queues, antre beside
RabbitMQ 3.10.

Starts a single antre node of BINARY on loopback (AMQP 5831, HTTP 15831;
data in a temporary directory, removed after), and uses a RabbitMQ with
its management plugin already running (AMQP and HTTP ports as given; see
the developers' guide for starting one on side ports). Declares N durable
classic queues (default 10000) in each, each bound to amq.topic (queues
named bench-listing-N are deleted from RabbitMQ at the end), then times
each listing (the fastest of 5 requests) and prints both times and the
ratio RabbitMQ / antre (above 1: antre is faster).

Usage: scripts/bench-listings.py BINARY [N] [RABBIT_AMQP_PORT] [RABBIT_HTTP_PORT]
  e.g. scripts/bench-listings.py target/release/antre 10000 5682 15672
Needs python3 with pika.
"""
import base64
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import pika

AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()
PATHS = [
    "/api/queues?page=1&page_size=100",
    "/api/queues?page=1&page_size=100&sort=messages",
    "/api/queues",
    "/api/overview",
    "/api/exchanges",
    "/api/bindings",
    "/api/definitions",
    "/api/vhosts",
    "/api/nodes",
    "/api/consumers",
]


def get(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": AUTH})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
    return time.perf_counter() - start


def wait_http(port):
    for _ in range(200):
        try:
            get(port, "/api/overview")
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answers on HTTP port {port}")


def declare(amqp, n, delete=False):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", amqp))
    ch = conn.channel()
    for i in range(n):
        name = f"bench-listing-{i}"
        if delete:
            ch.queue_delete(name)
        else:
            ch.queue_declare(name, durable=True)
            ch.queue_bind(name, "amq.topic", f"key.{i}")
    conn.close()


def timings(http):
    return {path: min(get(http, path) for _ in range(5)) for path in PATHS}


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    rabbit_amqp = int(sys.argv[3]) if len(sys.argv) > 3 else 5682
    rabbit_http = int(sys.argv[4]) if len(sys.argv) > 4 else 15672
    data = tempfile.mkdtemp(prefix="bench-listings.")
    node = subprocess.Popen(
        [binary, "serve", "--amqp-listen", "127.0.0.1:5831", "--http-listen",
         "127.0.0.1:15831", "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(15831)
        wait_http(rabbit_http)
        declare(5831, n)
        declare(rabbit_amqp, n)
        antre = timings(15831)
        rabbit = timings(rabbit_http)
        declare(rabbit_amqp, n, delete=True)
    finally:
        node.terminate()
        node.wait()
        shutil.rmtree(data, ignore_errors=True)
    print(f"{n} queues: fastest of 5 requests, ms")
    print(f"{'request':<50} {'rabbitmq':>9} {'antre':>9} {'ratio':>7}")
    for path in PATHS:
        r, a = rabbit[path] * 1000, antre[path] * 1000
        print(f"{path:<50} {r:9.1f} {a:9.1f} {r / a:6.2f}x")


if __name__ == "__main__":
    main()
