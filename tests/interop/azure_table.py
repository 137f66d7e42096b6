"""Writes lead entities to a storage table with Azure's own Tables client,
as Microsoft's Azure-table lead destination writes them, for
tests/ingest_table.rs.

  azure_table.py create CONNECTION_STRING TABLE
  azure_table.py insert CONNECTION_STRING TABLE [SECONDS_APART] < entities.jsonl
      creates each JSON entity (with its PartitionKey and RowKey), printing
      a line as each is written;
  azure_table.py sas CONNECTION_STRING TABLE
      prints a read-only shared access signature for the table.
"""

import datetime
import json
import sys
import time

from azure.core.credentials import AzureNamedKeyCredential
from azure.data.tables import (
    TableSasPermissions,
    TableServiceClient,
    generate_table_sas,
)


def service(connection):
    return TableServiceClient.from_connection_string(connection)


def main():
    command, connection, table = sys.argv[1:4]
    if command == "create":
        service(connection).create_table_if_not_exists(table)
    elif command == "insert":
        apart = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
        client = service(connection).get_table_client(table)
        for line in sys.stdin:
            if line.strip():
                client.create_entity(json.loads(line))
                print("written", flush=True)
                time.sleep(apart)
    elif command == "sas":
        parts = dict(p.split("=", 1) for p in connection.split(";") if p)
        credential = AzureNamedKeyCredential(parts["AccountName"], parts["AccountKey"])
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        print(
            generate_table_sas(
                credential, table, permission=TableSasPermissions(read=True), expiry=expiry
            )
        )
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
