"""Drives antre with aio-pika (asyncio, over aiormq) the way its users do:
a robust connection, a channel with publisher confirms and a prefetch,
durable and quorum queues, confirmed persistent publishes, a consumer's
iterator with message.process() acks, a nack that requeues (redelivered
after), pub/sub over fanout and topic exchanges, a mandatory publish no
queue takes, a passive declare of a missing queue on a channel of its own,
and Queue.delete() with aio-pika's defaults (if_unused and if_empty). Run by
crates/antre/tests/aio_pika.rs with the broker's URL as the only argument;
prints "ok" and exits 0 on success."""

import asyncio
import sys

import aio_pika
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.exceptions import ChannelNotFoundEntity, DeliveryError
from pamqp.commands import Basic


async def main(url):
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=10)

        # Point to point: confirmed persistent payments, consumed once each.
        payments = await channel.declare_queue("aio.payments", durable=True)
        for n in range(20):
            confirm = await channel.default_exchange.publish(
                Message(f"payment-{n}".encode(), delivery_mode=DeliveryMode.PERSISTENT,
                        message_id=str(n)),
                routing_key="aio.payments",
            )
            assert isinstance(confirm, Basic.Ack), confirm
        got = []
        async with payments.iterator() as messages:
            async for message in messages:
                async with message.process():
                    assert not message.redelivered
                    assert message.delivery_mode == DeliveryMode.PERSISTENT
                    got.append(message.body.decode())
                if len(got) == 20:
                    break
        assert got == [f"payment-{n}" for n in range(20)], got

        # A nack with requeue comes back, marked redelivered.
        await channel.default_exchange.publish(Message(b"retry"), routing_key="aio.payments")
        first = await payments.get(timeout=5)
        assert not first.redelivered
        await first.nack(requeue=True)
        again = await payments.get(timeout=5)
        assert again.body == b"retry" and again.redelivered
        await again.ack()

        # A quorum queue, as aio-pika declares one.
        quorum = await channel.declare_queue(
            "aio.quorum", durable=True, arguments={"x-queue-type": "quorum"})
        await channel.default_exchange.publish(Message(b"q"), routing_key="aio.quorum")
        taken = await quorum.get(timeout=5)
        assert taken.body == b"q"
        assert taken.headers.get("x-delivery-count") in (None, 0), taken.headers
        await taken.ack()

        # Pub/sub: every subscriber of a fanout gets the delay notice.
        delays = await channel.declare_exchange("aio.delays", ExchangeType.FANOUT)
        crews = []
        for _ in range(3):
            q = await channel.declare_queue(exclusive=True)
            await q.bind(delays)
            crews.append(q)
        await delays.publish(Message(b"GA-123 delayed"), routing_key="")
        for q in crews:
            notice = await q.get(timeout=5)
            assert notice.body == b"GA-123 delayed"
            await notice.ack()
        # A topic exchange routes by pattern.
        orders = await channel.declare_exchange("aio.orders", ExchangeType.TOPIC)
        email = await channel.declare_queue(exclusive=True)
        await email.bind(orders, "order.*")
        await orders.publish(Message(b"changed"), routing_key="order.changed")
        # (aio-pika publishes mandatory unless told otherwise.)
        await orders.publish(Message(b"user"), routing_key="user.changed", mandatory=False)
        assert (await email.get(timeout=5)).body == b"changed"
        assert await email.get(fail=False) is None

        # A mandatory publish no queue takes comes back (basic.return before
        # its confirm), an error with on_return_raises.
        try:
            await channel.default_exchange.publish(
                Message(b"lost"), routing_key="aio.nowhere", mandatory=True)
            raise AssertionError("an unroutable mandatory publish was accepted")
        except DeliveryError as e:
            assert "NO_ROUTE" in str(e), e

        # A passive declare of a missing queue fails its own channel only.
        other = await connection.channel()
        try:
            await other.declare_queue("aio.missing", passive=True)
            raise AssertionError("a missing queue was found")
        except ChannelNotFoundEntity as e:
            assert "aio.missing" in str(e), e
        await channel.default_exchange.publish(Message(b"still"), routing_key="aio.payments")
        assert (await payments.get(timeout=5, no_ack=True)).body == b"still"

        # aio-pika's Queue.delete() sends if_unused and if_empty (RabbitMQ
        # 3.10 closes the connection there for the quorum queue, 540: a
        # deliberate difference, docs/compatibility.md).
        await payments.delete()
        await quorum.delete()
        try:
            check = await connection.channel()
            await check.declare_queue("aio.payments", passive=True)
            raise AssertionError("aio.payments still exists")
        except ChannelNotFoundEntity:
            pass
    print("ok")


asyncio.run(main(sys.argv[1]))
