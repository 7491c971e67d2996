"""Celery's native delayed delivery (kombu 5.5+), as a Celery worker on
quorum queues sets it up and an ETA/countdown task uses it: 28 levels of
topic exchanges and quorum queues whose x-message-ttl doubles per level
(up to 2^27 s, which py-amqp writes with the field tag 'L'), each
dead-lettering to the next level (at-least-once), and a delivery exchange
bound to the task queue's exchange. A message published with a 2 s
countdown must reach the task queue after about 2 s, and not before.

Usage: delayed_delivery.py AMQP_URL. Prints "ok"."""

import sys
import time

from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)

COUNTDOWN = 2

with Connection(sys.argv[1].replace("amqp://", "pyamqp://", 1)) as conn:
    declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")
    tasks = Queue(
        "tasks",
        Exchange("tasks", type="topic"),
        routing_key="tasks",
        queue_arguments={"x-queue-type": "quorum"},
    )
    tasks.bind(conn.channel()).declare()
    bind_queue_to_native_delayed_delivery_exchange(conn, tasks)

    got = []
    channel = conn.channel()
    consumer = conn.Consumer(
        tasks, channel=channel, callbacks=[lambda body, m: (got.append(body), m.ack())]
    )
    consumer.consume()
    producer = conn.Producer()
    sent = time.monotonic()
    producer.publish(
        {"task": "add", "args": [2, 2]},
        exchange=level_name(27),
        routing_key=calculate_routing_key(COUNTDOWN, "tasks"),
        declare=[],
    )
    while not got and time.monotonic() - sent < 30:
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass
    waited = time.monotonic() - sent
    assert got == [{"task": "add", "args": [2, 2]}], got
    # Within the ttl's granularity: not before the countdown, not long after.
    assert COUNTDOWN - 0.1 <= waited < COUNTDOWN + 5, waited
print("ok")
