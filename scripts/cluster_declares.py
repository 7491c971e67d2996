#!/usr/bin/env python3
"""Declares N queues one at a time through one node of a cluster (pika,
each declare waiting for its declare-ok, as applications do at start-up)
and prints one line: the broker's name, then the rate of each block of
BLOCK declares (declares/s), then the whole run's rate.

Usage: scripts/cluster_declares.py NAME PORT N BLOCK [classic|quorum|transient]
"""
import sys
import time

import pika


def main():
    name, port, n, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    kind = sys.argv[5] if len(sys.argv) > 5 else "classic"
    conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=port))
    ch = conn.channel()
    args = {"x-queue-type": "quorum"} if kind == "quorum" else {}
    rates = []
    start = last = time.monotonic()
    for k in range(n):
        ch.queue_declare(f"decl-{k}", durable=kind != "transient", arguments=args)
        if (k + 1) % block == 0:
            now = time.monotonic()
            rates.append(block / (now - last))
            last = now
    total = n / (time.monotonic() - start)
    print(name, " ".join(f"{r:.0f}" for r in rates), f"{total:.0f}")
    conn.close()


if __name__ == "__main__":
    main()
