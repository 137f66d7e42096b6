"""Writes KEYS dedupe keys straight into a dedupe changelog, for the
benchmark's restore of a large state: one record per key in the format
`stages::dedupe` documents (tag `s` and the 128-bit key, big-endian; the
value the event time let through and the latest seen, in milliseconds),
each on the partition `partition_for` gives it (the key modulo the
partition count), dated a day ago so that no expiry takes them.

  changelog_fill.py BOOTSTRAP TOPIC KEYS PARTITIONS
"""

import random
import sys
import time

from confluent_kafka import Producer


def main(bootstrap, topic, keys, partitions):
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "compression.type": "lz4",
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
    })
    failed = []

    def delivered(error, _message):
        if error is not None and len(failed) < 5:
            failed.append(str(error))

    day_ago = int(time.time() * 1000) - 86_400_000
    value = day_ago.to_bytes(8, "big") * 2
    rng = random.Random(7)
    for _ in range(keys):
        key = rng.getrandbits(128)
        while True:
            try:
                producer.produce(topic, value, b"s" + key.to_bytes(16, "big"),
                                 partition=key % partitions, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    left = producer.flush(120)
    if left or failed:
        sys.exit(f"{left} changelog records not delivered; failures: {failed}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
