"""A standard Confluent-format producer and consumer, for tests/registry.rs.

  confluent_avro.py produce BOOTSTRAP REGISTRY TOPIC SCHEMA_FILE < leads.jsonl
      writes each JSON lead with Confluent's AvroSerializer, which registers
      the schema under TOPIC-value and frames each record with its id;
  confluent_avro.py consume BOOTSTRAP REGISTRY TOPIC COUNT
      reads COUNT records (read_committed) with Confluent's AvroDeserializer,
      which looks each writer schema up by the id in the frame, and prints
      each as one JSON line.
"""

import json
import sys
import time

from confluent_kafka import Consumer, SerializingProducer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def registry_client(url):
    """Confluent's registry client, bounded in time. Its HTTP client waits
    forever by default ("timeout" unset), and once sat blocked on a kept-alive
    connection to the registry that never answered: every request now has a
    timeout, and no connection is reused."""
    client = SchemaRegistryClient({"url": url, "timeout": 10})
    client._rest_client.session.headers["Connection"] = "close"
    return client


def produce(bootstrap, registry, topic, schema_file):
    client = registry_client(registry)
    with open(schema_file, encoding="utf-8") as f:
        schema = f.read()
    producer = SerializingProducer(
        {
            "bootstrap.servers": bootstrap,
            "value.serializer": AvroSerializer(client, schema),
            "enable.idempotence": True,
            "message.timeout.ms": 30000,
        }
    )
    count = 0
    for line in sys.stdin:
        if line.strip():
            producer.produce(topic, value=json.loads(line), partition=0)
            count += 1
    remaining = producer.flush(30)
    if remaining:
        sys.exit(f"{remaining} records not delivered")
    print(count)


def consume(bootstrap, registry, topic, count):
    deserializer = AvroDeserializer(registry_client(registry))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"interop-{topic}-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    read = 0
    while read < count and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            sys.exit(str(message.error()))
        context = SerializationContext(topic, MessageField.VALUE)
        # Logical types (timestamp-millis) come back as datetimes.
        record = deserializer(message.value(), context)
        print(json.dumps(record, default=str), flush=True)
        read += 1
    consumer.close()
    if read < count:
        sys.exit(f"read {read} of {count} records from {topic}")


if __name__ == "__main__":
    command, bootstrap, registry, topic, last = sys.argv[1:6]
    if command == "produce":
        produce(bootstrap, registry, topic, last)
    else:
        consume(bootstrap, registry, topic, int(last))
