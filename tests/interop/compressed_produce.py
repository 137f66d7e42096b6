"""Writes raw records compressed with one codec, for tests/tools.rs.

  compressed_produce.py BOOTSTRAP TOPIC CODEC < records.tsv
      writes each KEY<tab>VALUE line to partition 0 of TOPIC with
      Confluent's Python client, compression.type=CODEC (gzip, snappy, lz4
      or zstd), in batches big enough for the codec to be used.
"""

import sys

from confluent_kafka import Producer


def main():
    bootstrap, topic, codec = sys.argv[1:4]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "enable.idempotence": True,
            # One batch for all: a codec is used where it makes a batch smaller.
            "linger.ms": 200,
            "message.timeout.ms": 30000,
        }
    )
    for line in sys.stdin:
        if line.strip():
            key, value = line.rstrip("\n").split("\t", 1)
            producer.produce(topic, key=key, value=value, partition=0)
    remaining = producer.flush(30)
    if remaining:
        sys.exit(f"{remaining} records not delivered")


if __name__ == "__main__":
    main()
