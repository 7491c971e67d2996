"""aio-pika's robust connection through a broker crash: a consumer holds
a persistent payment unacked when antre is killed -9 and restarted on the
same port; connect_robust reconnects by itself and restores its channel,
a durable queue, a server-named exclusive queue bound to a fanout and
both consumers; the payment comes again marked redelivered, and new
publishes reach both consumers. Run by crates/antre/tests/aio_pika.rs
with the broker's URL: prints "ready" once it holds the payment, waits
for a line on stdin (the broker was restarted), prints "ok" and exits 0
on success."""

import asyncio
import sys

import aio_pika
from aio_pika import DeliveryMode, ExchangeType, Message


async def main(url):
    connection = await aio_pika.connect_robust(url, reconnect_interval=0.2)
    reconnected = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: reconnected.set())
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=10)
    payments = await channel.declare_queue("aio.recovering", durable=True)
    fanout = await channel.get_exchange("amq.fanout")
    notices = await channel.declare_queue(exclusive=True)
    await notices.bind(fanout)

    got = asyncio.Queue()
    broadcast = asyncio.Queue()
    await payments.consume(got.put)
    await notices.consume(lambda m: broadcast.put_nowait(m.body), no_ack=True)

    await channel.default_exchange.publish(
        Message(b"payment-1", delivery_mode=DeliveryMode.PERSISTENT), routing_key="aio.recovering")
    held = await asyncio.wait_for(got.get(), 30)
    assert held.body == b"payment-1" and not held.redelivered
    # Held unacked through the crash.
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    await asyncio.wait_for(reconnected.wait(), 60)
    again = await asyncio.wait_for(got.get(), 30)
    assert again.body == b"payment-1" and again.redelivered, (again.body, again.redelivered)
    await again.ack()
    await channel.default_exchange.publish(
        Message(b"payment-2", delivery_mode=DeliveryMode.PERSISTENT), routing_key="aio.recovering")
    await fanout.publish(Message(b"notice"), routing_key="", mandatory=False)
    second = await asyncio.wait_for(got.get(), 30)
    assert second.body == b"payment-2" and not second.redelivered
    await second.ack()
    assert await asyncio.wait_for(broadcast.get(), 30) == b"notice"
    await connection.close()
    print("ok", flush=True)


asyncio.run(main(sys.argv[1]))
