"""Reads what scripts/bench.sh measured and prints its Markdown report.

  bench_report.py drain WORK LEADS LEADFLOW PINNED   the throughput table
  bench_report.py first-commit BOOTSTRAP GROUP TOPIC OUT   when GROUP first committed
  bench_report.py latency WORK LEADFLOW CONFIG TOPIC COUNT RATE WARMUP_S LABEL
                                          produce COUNT leads at RATE/s and
                                          time each campaign record's
                                          arrival at a read_committed reader
"""

import json
import os
import re
import queue
import subprocess
import sys
import threading
import time
from datetime import datetime

MODES = ["passthrough", "exactly-once", "at-least-once", "default", "through-the-hop"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_seconds(work, mode):
    """Processing time: first partition assignment to the drained input."""
    stamps = {}
    for line in open(os.path.join(work, f"{mode}.log")):
        line = ANSI.sub("", line)
        for event in ("partitions assigned", "input drained"):
            if event in line and (event not in stamps or event == "input drained"):
                stamps[event] = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
    return (stamps["input drained"] - stamps["partitions assigned"]).total_seconds()


def drained(work, leads):
    expected = json.load(open(os.path.join(work, "expected.json")))
    rows = {}
    for mode in MODES:
        wall, user, system, rss_kib = open(os.path.join(work, f"{mode}.time")).read().split()[:4]
        tally = json.loads(open(os.path.join(work, f"{mode}.tally")).read() or "{}")
        if mode == "passthrough":
            matches = tally.get("inputs") == leads
        else:
            got = {k: v for k, v in tally.items() if k != "repartitioned"}
            want = {k: v for k, v in expected.items() if k != "repartitioned"}
            matches = got == want
        seconds = log_seconds(work, mode)
        cpu = float(user) + float(system)
        rows[mode] = dict(
            seconds=seconds,
            rate=leads / seconds,
            cpu=cpu,
            rss=int(rss_kib) / 1024,
            matches="yes" if matches else "NO",
        )
    streams = os.path.join(work, "kafka-streams.time")
    if os.path.exists(streams):
        running, drained_at, ticks, hz, rss_kib = open(streams).read().split()
        seconds = float(drained_at) - float(running)
        rows["kafka-streams"] = dict(
            seconds=seconds,
            rate=leads / seconds,
            cpu=int(ticks) / int(hz),
            rss=int(rss_kib) / 1024,
            matches="not checked",
        )
    return rows


def machine(leadflow):
    cpu = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
    mem = int(re.search(r"MemTotal:\s*(\d+)", open("/proc/meminfo").read()).group(1)) // 1024 // 1024
    lock = open("Cargo.lock").read()
    rdkafka = re.search(r'name = "rdkafka-sys"\nversion = "([^"]+)"', lock).group(1)
    pom = open("scripts/kafka/pom.xml").read()
    kafka = re.search(r"<kafka.version>([^<]+)<", pom)
    version = subprocess.run([leadflow, "--version"], capture_output=True, text=True).stdout.strip()
    if "/debug/" in leadflow:
        version += " (debug build: a smoke run, its figures mean nothing)"
    return (
        f"Machine: {os.cpu_count()} cores ({model}), {mem} GiB; the broker on the same machine.  \n"
        f"Versions: {version}; rdkafka-sys {rdkafka} (librdkafka); Apache Kafka "
        f"{kafka.group(1) if kafka else '?'} (KRaft, one node).\n"
    )


def report_drain(work, leads, leadflow, pinned):
    rows = drained(work, leads)
    base = rows["passthrough"]["rate"]
    print(machine(leadflow))
    print(f"{leads:,} generated leads preloaded into 12 partitions, drained by "
          f"`leadflow run --until-drained` ({'debug' if '/debug/' in leadflow else 'release'} build), "
          "commit interval 100 ms"
          + (", the broker pinned to core 0 and each contender to core 1 (taskset)."
             if int(pinned) else ", unpinned (one core)."))
    print()
    print("| contender | processing s | leads/s | × pass-through | CPU s | CPU µs per lead | peak RSS MiB | tally matches |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['seconds']:.1f} | {r['rate']:,.0f} | {r['rate'] / base:.2f} | "
              f"{r['cpu']:.1f} | {r['cpu'] * 1e6 / leads:.1f} | {r['rss']:.0f} | {r['matches']} |")
    print()
    if "kafka-streams" in rows:
        ratio = rows["default"]["rate"] / rows["kafka-streams"]["rate"]
        print(f"The default configuration against Kafka Streams (1 thread), leads/s: **{ratio:.1f}×**. "
              "Kafka Streams' processing time runs from its group's first commit (it logs nothing "
              "to start a clock on; this leaves out up to a commit interval of its work, in its "
              "favour) to its commits reaching the end of the input and of its repartition topic "
              "(polled every 200 ms); its CPU includes the JVM's start-up.\n")
    else:
        print("The Kafka Streams reference was not run (not found).\n")
    restore(work, "restore", "Restart of the exactly-once run")
    restore(work, "restore-large", "Restore of a changelog of written keys")
    if any(r["matches"] == "NO" for r in rows.values()):
        print("A run's tally does not match the generator's expectation.", file=sys.stderr)
        sys.exit(1)


def restore(work, name, what):
    """A run that restored dedupe state and found nothing to drain."""
    restored = [ANSI.sub("", line) for line in open(os.path.join(work, f"{name}.log"))
                if "dedupe state restored" in line]
    field = lambda name, line: int(re.search(name + r"=(\d+)", line).group(1))
    records = sum(field("records", line) for line in restored)
    # A record holds one change, or a batch of them.
    changes = sum(field("changes", line) for line in restored)
    # Each line gives the keys held after it, over every partition.
    keys = field("keys", restored[-1]) if restored else 0
    seconds = sum(field("millis", line) for line in restored) / 1000
    wall, user, system, rss_kib = open(os.path.join(work, f"{name}.time")).read().split()[:4]
    print(f"{what}: {changes:,} changes in {records:,} changelog records restored into "
          f"{keys:,} dedupe keys in {seconds:.1f} s ({changes / max(seconds, 0.001):,.0f} changes/s); "
          f"CPU {float(user) + float(system):.1f} s; peak RSS {int(rss_kib) / 1024:.0f} MiB.\n")


def p99_of(window):
    return sorted(window)[min(len(window) - 1, int(0.99 * len(window)))]


def latency(work, leadflow, config, topic, count, rate, warmup_s, label):
    count, rate, warmup_ms = int(count), float(rate), float(warmup_s) * 1000
    tail = subprocess.Popen(
        [leadflow, "-c", config, "tail", topic, "--from-beginning", "--timestamps"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )
    produce = subprocess.Popen(
        [leadflow, "-c", config, "produce", "--count", str(count), "--rate", str(rate)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # A thread blocks on the pipe and stamps each line as it arrives:
    # select() on a buffered pipe would leave read-ahead lines waiting.
    arrivals = queue.Queue()

    def read():
        for line in tail.stdout:
            arrivals.put((time.time() * 1000, line))
        arrivals.put(None)

    threading.Thread(target=read, daemon=True).start()
    latencies = []
    quiet_since = None
    while True:
        try:
            item = arrivals.get(timeout=0.5)
        except queue.Empty:
            item = False
        if item is None:
            break
        if item:
            arrived, line = item
            produced = int(line)
            latencies.append((produced, arrived - produced))
            quiet_since = None
        elif produce.poll() is not None:
            quiet_since = quiet_since or time.time()
            # Everything produced is committed well within this.
            if time.time() - quiet_since > 5:
                break
    tail.terminate()
    tail.wait()
    # The first seconds are a warm-up, not timed: the clients connect, the
    # producer gets its id, and the broker's first writes to the phase's new
    # partitions fault in their memory-mapped index files, which stalled the
    # broker's core for up to 10 s after the drains (docs/BENCHMARKS.md).
    # What the warm-up cost is reported beside the figures.
    # A backlog shows as latency growing from one 10 s window to the next.
    first = min((produced for produced, _ in latencies), default=0)
    warmup_windows, windows = {}, {}
    for produced, latency in latencies:
        since = produced - first
        if since < warmup_ms:
            warmup_windows.setdefault(int(since // 10_000), []).append(latency)
        else:
            windows.setdefault(int((since - warmup_ms) // 10_000), []).append(latency)
    warmup = [latency for window in warmup_windows.values() for latency in window]
    timed = [latency for window in windows.values() for latency in window]
    latencies = sorted(timed)

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else float("nan")

    print(f"End-to-end latency at {rate:,.0f} leads/s ({label}), {count:,} leads "
          f"produced with their time of producing, {len(latencies):,} campaign records timed at a "
          f"read_committed reader after a {warmup_ms / 1000:.0f} s warm-up (its {len(warmup):,} records: "
          f"max {max(warmup, default=float('nan')):.0f} ms; p99 per 10 s "
          f"{', '.join(f'{p99_of(w):.0f}' for _, w in sorted(warmup_windows.items())) or 'none'} ms):\n")
    print("| p50 ms | p99 ms | p99.9 ms | max ms |")
    print("|---|---|---|---|")
    print(f"| {pct(50):.0f} | {pct(99):.0f} | {pct(99.9):.0f} | {latencies[-1] if latencies else float('nan'):.0f} |")
    print()
    if windows:
        p99 = [p99_of(w) for _, w in sorted(windows.items())]
        print(f"p99 ms per 10 s of producing, in order (a backlog would grow): {', '.join(f'{p:.0f}' for p in p99)}; "
              f"{len(timed) + len(warmup):,} of {count:,} leads' campaign records arrived "
              "(the rest were duplicates, suppressed, dead letters or routed to the other campaign).")
        print()


def first_commit(bootstrap, group, topic, out):
    """Waits for `group`'s first commit on `topic` (the Kafka Streams
    reference logs nothing to watch for) and writes its time to `out`."""
    from confluent_kafka import Consumer, TopicPartition
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                      "enable.auto.commit": False})
    partitions = [TopicPartition(topic, p) for p in
                  probe.list_topics(topic, timeout=10).topics[topic].partitions]
    deadline = time.time() + 600
    while time.time() < deadline:
        if any(tp.offset > 0 for tp in probe.committed(partitions, timeout=10)):
            open(out, "w").write(f"{time.time()}\n")
            probe.close()
            return
        time.sleep(0.05)  # the granularity of the start time
    sys.exit(f"{group} committed nothing on {topic} in 600 s")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "drain":
        report_drain(args[0], int(args[1]), args[2], args[3])
    elif command == "latency":
        latency(*args)
    elif command == "first-commit":
        first_commit(*args)
    else:
        sys.exit(f"unknown command {command}")
