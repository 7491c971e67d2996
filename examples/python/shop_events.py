#!/usr/bin/env python3
"""E-commerce events with pika: the same scenario as `--bin shop-events`.

Events go to the topic exchange `shop.events` with keys `<entity>.<event>`.
Email, inventory and shipping bind `order.*`; cart and orders bind
`user.updated`. Each service gets exactly the events it asked for.

    pip install pika
    python3 examples/python/shop_events.py [--url amqp://guest:guest@127.0.0.1:5672/%2f]

Exits 0 when every service got exactly its events, in order; 1 otherwise.
"""

import argparse
import json
import os
import sys
import time

import pika

EXCHANGE = "shop.events"
SERVICES = {
    "email": ["order.*"],
    "inventory": ["order.*"],
    "shipping": ["order.*"],
    "cart": ["user.updated"],
    "orders": ["user.updated"],
}
ORDER_SERVICES = ["email", "inventory", "shipping"]
USER_SERVICES = ["cart", "orders"]

# (routing key, event, the services that must get it: written out by hand,
# so it documents the routing too)
EVENTS = [
    ("order.created", {"id": "E-01", "subject": "o-5001",
                       "detail": "Budi (u-77): 2× Kopi Gayo 250 g, 1× French press"}, ORDER_SERVICES),
    ("user.updated", {"id": "E-02", "subject": "u-77", "detail": "Budi moved to Jl. Dago 12, Bandung"},
     USER_SERVICES),
    ("order.paid", {"id": "E-03", "subject": "o-5001", "detail": "Rp 415.000 via QRIS"}, ORDER_SERVICES),
    ("order.created", {"id": "E-04", "subject": "o-5002", "detail": "Sari (u-81): 1× Batik shirt, size M"},
     ORDER_SERVICES),
    # No binding matches: returned to the publisher (it is mandatory).
    ("user.created", {"id": "E-05", "subject": "u-82", "detail": "Rina signed up"}, []),
    ("order.cancelled", {"id": "E-06", "subject": "o-5002", "detail": "Sari cancelled before payment"},
     ORDER_SERVICES),
    ("user.updated", {"id": "E-07", "subject": "u-81", "detail": "Sari changed her phone number"},
     USER_SERVICES),
]

REACTIONS = {
    ("email", "order.created"): "mail 'We got your order {subject}' ({detail})",
    ("email", "order.paid"): "mail the receipt for {subject} ({detail})",
    ("email", "order.cancelled"): "mail 'Order {subject} cancelled'",
    ("inventory", "order.created"): "reserve stock for {subject}",
    ("inventory", "order.paid"): "commit the reservation for {subject}",
    ("inventory", "order.cancelled"): "release the reservation for {subject}",
    ("shipping", "order.created"): "plan {subject}, to ship once paid",
    ("shipping", "order.paid"): "book a courier pickup for {subject}",
    ("shipping", "order.cancelled"): "drop {subject} from the plan",
    ("cart", "user.updated"): "refresh the cached profile of {subject} ({detail})",
    ("orders", "user.updated"): "update {subject} on open orders ({detail})",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    params = pika.URLParameters(ap.parse_args().url)

    conn = pika.BlockingConnection(params)
    pub = conn.channel()
    pub.exchange_delete(EXCHANGE)
    pub.exchange_declare(EXCHANGE, "topic")
    pub.confirm_delivery()

    received = {s: [] for s in SERVICES}
    for service, patterns in SERVICES.items():
        ch = conn.channel()
        queue = f"shop.{service}"
        ch.queue_declare(queue, exclusive=True)
        for pattern in patterns:
            ch.queue_bind(queue, EXCHANGE, pattern)
        print(f"  {service:<10} subscribed: queue `{queue}` bound with {', '.join(patterns)}")

        def on_event(ch, method, props, body, service=service):
            e, key = json.loads(body), method.routing_key
            reaction = REACTIONS.get((service, key), "{subject}: ignored").format(**e)
            print(f"  {service:<10} {key:<16} {reaction}")
            received[service].append((key, e["id"]))
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_event, consumer_tag=service)
    print()

    returned = []
    for key, e, _ in EVENTS:
        print(f"publish {key:<16} {e['id']} {e['subject']}: {e['detail']}")
        try:
            pub.basic_publish(EXCHANGE, key, json.dumps(e).encode(), mandatory=True,
                              properties=pika.BasicProperties(message_id=e["id"], type=key,
                                                              content_type="application/json"))
        except pika.exceptions.UnroutableError:
            print(f"  returned to the publisher: NO_ROUTE (no service subscribes to {key})")
            returned.append(e["id"])
        conn.process_data_events(time_limit=0.05)

    expected = {s: [(k, e["id"]) for k, e, audience in EVENTS if s in audience] for s in SERVICES}
    deadline = time.time() + 15
    while time.time() < deadline and any(len(received[s]) < len(expected[s]) for s in SERVICES):
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.2)  # a misrouted event would show up now

    print("\nChecking the outcome:")
    failed = []

    def check(ok, what):
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failed.append(what)

    for service, patterns in SERVICES.items():
        ids = " ".join(i for _, i in expected[service])
        check(received[service] == expected[service],
              f"{service} ({', '.join(patterns)}) got exactly {ids}")
    check(returned == [e["id"] for _, e, audience in EVENTS if not audience],
          "the event no one subscribes to was returned to its publisher")

    pub.exchange_delete(EXCHANGE)
    conn.close()
    if failed:
        print(f"\nFAILED: {len(failed)} check(s) failed")
        return 1
    print("\nAll checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
