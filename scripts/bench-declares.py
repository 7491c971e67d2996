#!/usr/bin/env python3
"""What a new quorum queue's start costs a 3-node antre cluster.

Starts three nodes of BINARY on loopback (cluster 25821-25823, AMQP
5821-5823, HTTP 15821-15823; data in a temporary directory, removed after), declares N
quorum queues (default 300) over HTTP one at a time through node after
node (client-local: each led where it is declared), then waits until
every queue has a leader. Prints the time the declares took, the time
until all were led, the p50 and p99 of one declare, the 12 slowest, and
how many queues are led by the node they were declared through.

Usage: scripts/bench-declares.py BINARY [N]
  e.g. scripts/bench-declares.py target/release/antre 300
"""
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BASE = 820
AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


def api(i, method, path, body=None, timeout=10):
    req = urllib.request.Request(
        f"http://127.0.0.1:{15000 + BASE + i}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": AUTH, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, None


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    antre, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
    out = tempfile.mkdtemp(prefix="bench-declares.")
    peers = ",".join(f"n{i}=127.0.0.1:{25000 + BASE + i}" for i in (1, 2, 3))
    env = dict(os.environ, ANTRE_CLUSTER_SECRET="bench-declares-secret-0123456789")
    procs = []
    for i in (1, 2, 3):
        procs.append(subprocess.Popen(
            [antre, "serve", "--node-name", f"n{i}",
             "--cluster-listen", f"127.0.0.1:{25000 + BASE + i}", "--cluster-peers", peers,
             "--amqp-listen", f"127.0.0.1:{5000 + BASE + i}",
             "--http-listen", f"127.0.0.1:{15000 + BASE + i}",
             "--data-dir", f"{out}/n{i}"],
            env=env, stderr=open(f"{out}/n{i}.log", "w")))
    try:
        for _ in range(200):
            try:
                if api(1, "PUT", "/api/queues/%2F/warm-up", {"durable": True})[0] in (201, 204):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            sys.exit(f"the cluster took no change within 20 s (logs in {out})")
        took = []
        start = time.time()
        for k in range(n):
            t = time.time()
            status, _ = api(1 + k % 3, "PUT", f"/api/queues/%2F/q{k}",
                            {"durable": True, "arguments": {"x-queue-type": "quorum"}})
            if status not in (201, 204):
                sys.exit(f"declare q{k}: {status}")
            took.append(time.time() - t)
        declared = time.time() - start
        while True:
            _, queues = api(1, "GET", "/api/queues")
            queues = [q for q in queues if q["name"].startswith("q")]
            if len(queues) == n and all(q.get("leader") for q in queues):
                break
            time.sleep(0.05)
        led = time.time() - start
        here = sum(1 for q in queues if q["leader"] == f"n{1 + int(q['name'][1:]) % 3}")
        took.sort()
        print(f"{n} quorum declares in {declared:.2f} s, all led after {led:.2f} s; "
              f"declare p50 {statistics.median(took) * 1e3:.1f} ms "
              f"p99 {took[int(len(took) * 0.99) - 1] * 1e3:.1f} ms; "
              f"slowest {[round(x * 1e3) for x in took[-12:]]} ms; "
              f"led where declared {here}/{n}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
