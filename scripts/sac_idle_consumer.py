"""One rstream SuperStreamConsumer with single active consumer, for
scripts/bench-sac-idle.sh: joins group "idle" of super stream SUPER
(created with PARTITIONS partitions if missing) through the stream
listener at HOST:PORT, prints "ready" once subscribed, and then idles
until killed."""

import asyncio
import sys

from rstream import (
    AMQPMessage,
    MessageContext,
    SuperStreamConsumer,
    SuperStreamCreationOption,
)
from rstream.schema import OffsetSpecification, OffsetType


async def main(host: str, port: int, super_stream: str, partitions: int) -> None:
    consumer = SuperStreamConsumer(
        host=host,
        port=port,
        username="guest",
        password="guest",
        super_stream=super_stream,
        super_stream_creation_option=SuperStreamCreationOption(n_partitions=partitions),
    )

    async def on_message(msg: AMQPMessage, ctx: MessageContext) -> None:
        pass

    async def on_update(active: bool, ctx) -> OffsetSpecification:
        # rstream 1.1.1 cannot encode its own ConsumerOffsetSpecification
        # in a consumer update's answer; the schema's type it can.
        return OffsetSpecification(OffsetType.NEXT, 0)

    await consumer.start()
    await consumer.subscribe(
        on_message,
        properties={"single-active-consumer": "true", "name": "idle"},
        consumer_update_listener=on_update,
    )
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
