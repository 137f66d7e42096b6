"""Posts leads as Microsoft's HTTPS-endpoint lead destination does, one
JSON lead per POST, for tests/ingest.rs.

  post_leads.py URL < leads.jsonl

prints the status of each answer on a line of its own.
"""

import sys
import urllib.error
import urllib.request


def post(url, body):
    request = urllib.request.Request(
        url,
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


if __name__ == "__main__":
    url = sys.argv[1]
    for line in sys.stdin:
        if line.strip():
            print(post(url, line.strip()), flush=True)
