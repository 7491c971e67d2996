"""rstream's stream filtering against antre: a producer with a filter value
extractor (publish version 2) tags each message with its region, and a
consumer subscribed with a FilterConfiguration for "emea" and no client-side
predicate gets only emea messages: each message is confirmed before the next
is sent, so each sits in a chunk of its own, and the broker skips the chunks
whose Bloom filter cannot match.

Usage: filtering.py HOST PORT STREAM; prints "ok" on success."""

import asyncio
import sys

from rstream import (
    AMQPMessage,
    Consumer,
    ConsumerOffsetSpecification,
    FilterConfiguration,
    OffsetType,
    Producer,
    amqp_decoder,
)


async def region(msg: AMQPMessage) -> str:
    return msg.application_properties["region"]


async def main(host: str, port: int, stream: str) -> None:
    auth = dict(username="guest", password="guest")
    regions = ["emea", "apac", "amer"] * 10 + ["emea"]
    async with Producer(host, port=port, filter_value_extractor=region, **auth) as producer:
        for i, r in enumerate(regions):
            msg = AMQPMessage(body=f"{r}-{i}".encode(), application_properties={"region": r})
            await producer.send_wait(stream, msg)

    want = [f"emea-{i}" for i, r in enumerate(regions) if r == "emea"]
    got = []
    done = asyncio.Event()

    async def on_message(msg, ctx):
        got.append(bytes(msg.body).decode())
        if got[-1] == want[-1]:
            done.set()

    consumer = Consumer(host, port=port, **auth)
    await consumer.start()
    await consumer.subscribe(
        stream,
        on_message,
        decoder=amqp_decoder,
        offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None),
        filter_input=FilterConfiguration(values_to_filter=["emea"], match_unfiltered=False),
    )
    await asyncio.wait_for(done.wait(), 15)
    assert got == want, got
    await consumer.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
