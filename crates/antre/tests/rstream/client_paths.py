"""rstream (RabbitMQ's Python stream client) against antre's stream
protocol listener: publish with confirms under a publisher name (a retried
publishing id is stored once), read the whole stream from the first offset
(a message written over AMQP 0-9-1 first), store and query an offset.

Usage: client_paths.py HOST PORT STREAM; prints "ok" on success."""

import asyncio
import sys

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    OffsetType,
    Producer,
    amqp_decoder,
)


async def main(host: str, port: int, stream: str) -> None:
    auth = dict(username="guest", password="guest")
    async with Producer(host, port=port, **auth) as producer:
        for i in range(1, 51):
            msg = AMQPMessage(body=f"py-{i}".encode())
            msg.publishing_id = i
            await producer.send_wait(stream, msg, publisher_name="py-pub")
        # A retry of the last one after a lost confirm: confirmed, not
        # stored twice.
        retry = AMQPMessage(body=b"py-50")
        retry.publishing_id = 50
        await producer.send_wait(stream, retry, publisher_name="py-pub")

    got = []
    done = asyncio.Event()

    async def on_message(msg, ctx):
        got.append((ctx.offset, bytes(msg.body).decode()))
        if len(got) == 51:
            done.set()

    consumer = Consumer(host, port=port, **auth)
    await consumer.start()
    await consumer.subscribe(
        stream,
        on_message,
        decoder=amqp_decoder,
        offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
        subscriber_name="py-reader",
    )
    await asyncio.wait_for(done.wait(), 15)
    assert got[0] == (0, "from amqp"), got[0]
    expected = [(i, f"py-{i}") for i in range(1, 51)]
    assert got[1:] == expected, got[1:5]
    await consumer.store_offset(stream, "py-reader", 50)
    for _ in range(500):
        try:
            if await consumer.query_offset(stream, "py-reader") == 50:
                break
        except Exception:
            pass
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("stored offset never read back")
    await consumer.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
