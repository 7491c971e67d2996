#!/usr/bin/env python3
"""Payment processing with pika: the same scenario as `--bin payments`.

A durable, deduplicated work queue; publisher confirms; manual acks; a
worker that dies holding a payment; delayed retries through a TTL queue; and
a dead-letter queue with the x-death header printed.

    pip install pika
    python3 examples/python/payments.py [--url amqp://guest:guest@127.0.0.1:5672/%2f]

Exits 0 when every payment ended where it should, 1 otherwise.
"""

import argparse
import json
import os
import sys
import time

import pika

EXCHANGE = "payments"  # direct
QUEUE = "payments"  # the work queue
RETRY_QUEUE = "payments.retry"  # payments waiting out their delay
DEAD_EXCHANGE = "payments.dlx"  # fanout
DEAD_QUEUE = "payments.dead"  # for a person to look at
ROUTING_KEY = "payment"
RETRY_DELAY_MS = 300
MAX_ATTEMPTS = 3
DELIVERY_LIMIT = 5

CARD_OK = "4242 4242 4242 4242"
CARD_ISSUER_DOWN = "4000 0000 0000 0119"  # fails every attempt
CARD_SLOW_ONCE = "4000 0000 0000 3220"  # times out on the first attempt

PUBLISHER_CRASHES_AFTER = "p-1002"
WORKER_CRASHES_ON = "p-1003"

PAYMENTS = [
    {"id": "p-1001", "payer": "Ayu", "merchant": "Kopi Kenangan", "amount_idr": 45000, "card": CARD_OK},
    {"id": "p-1002", "payer": "Budi", "merchant": "Tokopedia", "amount_idr": 1250000, "card": CARD_OK},
    {"id": "p-1003", "payer": "Citra", "merchant": "Garuda Indonesia", "amount_idr": 2300000, "card": CARD_OK},
    {"id": "p-1004", "payer": "Dewi", "merchant": "PLN", "amount_idr": 350000, "card": CARD_ISSUER_DOWN},
    {"id": "p-1005", "payer": "Eko", "merchant": "Grab", "amount_idr": 78000, "card": CARD_SLOW_ONCE},
    {"id": "p-1006", "payer": "Fajar", "merchant": "Shopee", "amount_idr": 560000, "card": CARD_OK},
]


def describe(p):
    amount = f"{p['amount_idr']:,}".replace(",", ".")  # rupiah: 1.250.000
    return f"{p['payer']} → {p['merchant']}, {amount} IDR"


def charge(p, attempt):
    """The card gateway, simulated."""
    if p["card"] == CARD_ISSUER_DOWN:
        raise RuntimeError("issuer unavailable (ISO 8583 response 91)")
    if p["card"] == CARD_SLOW_ONCE and attempt == 1:
        raise RuntimeError("gateway timed out")
    return "AUTH-" + p["id"][2:]


def reset(ch):
    for q in (QUEUE, RETRY_QUEUE, DEAD_QUEUE):
        ch.queue_delete(q)
    for x in (EXCHANGE, DEAD_EXCHANGE):
        ch.exchange_delete(x)


def declare_topology(ch):
    ch.exchange_declare(EXCHANGE, "direct", durable=True)
    ch.exchange_declare(DEAD_EXCHANGE, "fanout", durable=True)
    # Durable, deduplicated by message-id, dead-lettering to payments.dlx.
    ch.queue_declare(QUEUE, durable=True, arguments={
        "x-message-deduplication": True,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-delivery-limit": DELIVERY_LIMIT,
    })
    ch.queue_bind(QUEUE, EXCHANGE, ROUTING_KEY)
    # No consumer: a payment waits here for the TTL, then is dead-lettered
    # back to the work queue.
    ch.queue_declare(RETRY_QUEUE, durable=True, arguments={
        "x-message-ttl": RETRY_DELAY_MS,
        "x-dead-letter-exchange": EXCHANGE,
        "x-dead-letter-routing-key": ROUTING_KEY,
    })
    ch.queue_declare(DEAD_QUEUE, durable=True)
    ch.queue_bind(DEAD_QUEUE, DEAD_EXCHANGE, "")


def publish_outbox(params, outbox, crash_after=None):
    """Publishes unsent payments, marking each sent once confirmed. With
    crash_after, "crashes" after that confirm, before marking it sent."""
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.confirm_delivery()  # basic_publish now waits for the broker's ack
    for row in outbox:
        if row["sent"]:
            continue
        p = row["payment"]
        ch.basic_publish(EXCHANGE, ROUTING_KEY, json.dumps(p).encode(), mandatory=True,
                         properties=pika.BasicProperties(
                             message_id=p["id"],  # the key the queue deduplicates on
                             delivery_mode=2, content_type="application/json", app_id="checkout"))
        print(f"  checkout: {p['id']} ({describe(p)}) confirmed by the broker")
        if crash_after == p["id"]:
            print(f"  checkout: crashes before recording that {p['id']} was sent!")
            conn.close()
            return True
        row["sent"] = True
    conn.close()
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    params = pika.URLParameters(ap.parse_args().url)

    setup_conn = pika.BlockingConnection(params)
    setup = setup_conn.channel()
    reset(setup)
    declare_topology(setup)

    print(f"Checkout publishes {len(PAYMENTS)} payments:")
    outbox = [{"payment": p, "sent": False} for p in PAYMENTS]
    publish_outbox(params, outbox, PUBLISHER_CRASHES_AFTER)
    print("  checkout restarts and publishes every payment its outbox still lists as unsent")
    publish_outbox(params, outbox, None)
    queued = setup.queue_declare(QUEUE, passive=True).method.message_count
    print(f"  `{QUEUE}` holds {queued} payments after {len(PAYMENTS) + 1} publishes\n")

    print(f"Workers start ({MAX_ATTEMPTS} attempts per payment, {RETRY_DELAY_MS} ms apart):")
    charges, failures, redelivered, dead = {}, {}, [], []
    crash_armed = [True]
    conn = pika.BlockingConnection(params)

    def worker(name):
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_qos(prefetch_count=1)  # a worker that dies holds one payment

        def on_payment(ch, method, props, body):
            p = json.loads(body)
            pid = p["id"]
            headers = dict(props.headers or {})
            attempt = headers.get("x-attempt", 1)
            if method.redelivered:
                count = headers.get("x-delivery-count")
                print(f"  {name}: {pid} arrives again, marked redelivered (x-delivery-count = {count})")
                redelivered.append(pid)
            if crash_armed[0] and pid == WORKER_CRASHES_ON:
                crash_armed[0] = False
                # Dying without an ack: the broker gives it to the other worker.
                print(f"  {name}: takes {pid} and dies before charging it (no ack)")
                ch.close()
                return
            try:
                auth = charge(p, attempt)
            except RuntimeError as why:
                failures.setdefault(pid, []).append(attempt)
                if attempt < MAX_ATTEMPTS:
                    print(f"  {name}: {pid} attempt {attempt} failed ({why}); retry in {RETRY_DELAY_MS} ms")
                    headers["x-attempt"] = attempt + 1
                    headers["x-last-error"] = str(why)
                    props.headers = headers
                    # Queue the next attempt, confirmed, before acking this one.
                    ch.basic_publish("", RETRY_QUEUE, body, properties=props)
                    ch.basic_ack(method.delivery_tag)
                else:
                    print(f"  {name}: {pid} attempt {attempt} failed ({why}); giving up, rejecting it")
                    # requeue=False: the broker dead-letters it to payments.dlx.
                    ch.basic_nack(method.delivery_tag, requeue=False)
                return
            print(f"  {name}: charged {pid} ({describe(p)}) on attempt {attempt}: {auth}")
            charges.setdefault(pid, []).append(attempt)
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(QUEUE, on_payment, consumer_tag=name)

    def ops_desk(ch, method, props, body):
        headers = props.headers or {}
        print(f"  ops-desk: {props.message_id} is in {DEAD_QUEUE} "
              f"(last error: {headers.get('x-last-error')}); x-death:")
        for d in headers.get("x-death", []):
            print(f"      queue={d.get('queue')} reason={d.get('reason')} count={int(d.get('count', 0))} "
                  f"exchange={d.get('exchange')!r} routing-keys={d.get('routing-keys')} time={d.get('time')}")
        dead.append((props.message_id, headers.get("x-death", [])))
        ch.basic_ack(method.delivery_tag)

    worker("worker-1")
    worker("worker-2")
    conn.channel().basic_consume(DEAD_QUEUE, ops_desk, consumer_tag="ops-desk")

    deadline = time.time() + 15
    while time.time() < deadline and not (len(charges) >= len(PAYMENTS) - 1 and dead):
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=2 * RETRY_DELAY_MS / 1000)  # let strays surface
    conn.close()

    print("\nChecking the outcome:")
    failed = []

    def check(ok, what):
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failed.append(what)

    check(all(r["sent"] for r in outbox), "checkout got a confirm for every payment")
    check(queued == len(PAYMENTS), "the payment published twice was queued once (deduplicated by message-id)")
    for p in PAYMENTS:
        if p["card"] == CARD_ISSUER_DOWN:
            check(p["id"] not in charges, f"{p['id']} was never charged")
        else:
            check(len(charges.get(p["id"], [])) == 1, f"{p['id']} was charged exactly once")
    check(redelivered == [WORKER_CRASHES_ON], "only the payment a worker died holding was redelivered")
    check(charges.get("p-1005") == [2], "p-1005 went through on its second attempt, after a delayed retry")
    check(failures.get("p-1004") == list(range(1, MAX_ATTEMPTS + 1)), f"p-1004 was attempted {MAX_ATTEMPTS} times")
    check([d[0] for d in dead] == ["p-1004"], f"only p-1004 reached {DEAD_QUEUE}")
    deaths = [(d.get("queue"), d.get("reason"), d.get("count")) for d in (dead[0][1] if dead else [])]
    check((QUEUE, "rejected", 1) in deaths, f"its x-death records it was rejected from `{QUEUE}` once")
    check((RETRY_QUEUE, "expired", MAX_ATTEMPTS - 1) in deaths,
          f"its x-death records {MAX_ATTEMPTS - 1} delays in `{RETRY_QUEUE}` (reason expired)")
    for q in (QUEUE, RETRY_QUEUE, DEAD_QUEUE):
        check(setup.queue_declare(q, passive=True).method.message_count == 0, f"`{q}` is empty at the end")

    reset(setup)
    setup_conn.close()
    if failed:
        print(f"\nFAILED: {len(failed)} check(s) failed")
        return 1
    print("\nAll checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
