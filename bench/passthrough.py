"""The ceiling: consume -> produce passthrough on the worker's own client stack.

Run as a process by the benchmark (``python -m bench.passthrough``), like a worker:
an aiokafka consumer in a consumer group and an aiokafka producer with acks=all,
configured as Faust configures them for the worker (fetch wait, no linger,
16 KiB batches). Each batch's records are copied to the target topic, every
acknowledgement is awaited, then the batch's offsets are committed: the same
shape as the worker's batches, with no decoding, ledger or provider. Stops on
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from sendonce.bench.options import add_pipe_arguments


async def passthrough(
    bootstrap: str, source: str, target: str, group: str, batch_size: int
) -> None:
    """Copy ``source`` to ``target`` until SIGTERM, committing after each batch is acked."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Faust's consumer settings for the worker's group.
        fetch_max_wait_ms=1500,
        max_poll_records=None,
    )
    # Faust's producer defaults: acks=all (the worker sets producer_acks=-1), no
    # linger, 16 KiB batches, no compression.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=16384
    )
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=batch_size)
            pending = [
                await producer.send(target, record.value, key=record.key)
                for records in batches.values()
                for record in records
            ]
            if pending:
                await asyncio.gather(*pending)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.passthrough``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pipe_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=500, help="the worker's default (500)")
    args = parser.parse_args(argv)
    asyncio.run(passthrough(args.bootstrap, args.source, args.target, args.group, args.batch_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
