#!/usr/bin/env bash
# What exactly-once costs, measured in one run on this machine: the same
# generated leads (LEADFLOW_MEASURE_LEADS, default 1,200,000, which leaves
# over a million dedupe keys) drained by `leadflow run --until-drained` under
# exactly-once, at-least-once, and exactly-once without the repartition hop;
# then the time a restart takes to restore the exactly-once run's dedupe
# state from its changelog. Starts a fresh broker and stops it again.
# Prints a Markdown report; docs/EXACTLY-ONCE.md holds the last one.
set -euo pipefail
cd "$(dirname "$0")/.."

leads=${LEADFLOW_MEASURE_LEADS:-1200000}
export LEADFLOW_KAFKA_PORT=${LEADFLOW_KAFKA_PORT:-19092}
bootstrap="127.0.0.1:$LEADFLOW_KAFKA_PORT"

cargo build --release --quiet
leadflow=target/release/leadflow
scripts/kafka.sh reset >&2
trap 'scripts/kafka.sh stop >&2' EXIT
scripts/kafka.sh start >&2

work=$(mktemp -d)
config() { # NAME GUARANTEE REPARTITION
  sed -e "s/127.0.0.1:9092/$bootstrap/" -e "s/^group_id = .*/group_id = \"measure-$1\"/" \
    config/quickstart.toml > "$work/$1.toml"
  printf '\n[topics]\ninput = "measure.raw"\n\n[pipeline]\nprocessing_guarantee = "%s"\nrepartition = %s\n' \
    "$2" "$3" >> "$work/$1.toml"
  "$leadflow" -c "$work/$1.toml" topics create --partitions 12 2> /dev/null
}
config exactly-once exactly-once true
config at-least-once at-least-once true
config exactly-once-no-repartition exactly-once false
"$leadflow" -c "$work/exactly-once.toml" produce --count "$leads" > "$work/expected.json"

# Text logs: the report reads timestamps off the start of each line.
export LEADFLOW_LOG__FORMAT=text
run() { # NAME LABEL
  /usr/bin/time -f '%e %U %S %M' -o "$work/$1.$2.time" \
    "$leadflow" -c "$work/$1.toml" run --until-drained > "$work/$1.$2.tally" 2> "$work/$1.$2.log"
}
for mode in exactly-once at-least-once exactly-once-no-repartition; do
  run "$mode" drain
done
run exactly-once restore

python3 - "$work" "$leads" <<'PY'
import json, os, re, sys
from datetime import datetime
work, leads = sys.argv[1], int(sys.argv[2])
ansi = re.compile(r'\x1b\[[0-9;]*m')
def lines(name):
    return [ansi.sub('', l) for l in open(os.path.join(work, name))]
def ts(line):
    return datetime.fromisoformat(line.split()[0].replace('Z', '+00:00'))
expected = json.load(open(os.path.join(work, 'expected.json')))
cpu = open('/proc/cpuinfo').read()
model = re.search(r'model name\s*:\s*(.*)', cpu).group(1)
mem = int(re.search(r'MemTotal:\s*(\d+)', open('/proc/meminfo').read()).group(1)) // 1024 // 1024
print(f"Machine: {os.cpu_count()} cores ({model}), {mem} GiB; broker on the same machine.\n")
print(f"{leads:,} generated leads in 12 partitions, drained by `leadflow run --until-drained` (release build).\n")
print("| mode | processing s | leads/s | wall s | CPU s | CPU s per million | peak RSS MiB | tally matches |")
print("|---|---|---|---|---|---|---|---|")
rates = {}
for mode in ['exactly-once', 'at-least-once', 'exactly-once-no-repartition']:
    log = lines(f'{mode}.drain.log')
    start = next(ts(l) for l in log if 'partitions assigned' in l)
    end = next(ts(l) for l in log if 'input drained' in l)
    secs = (end - start).total_seconds()
    wall, user, sys_, rss = open(os.path.join(work, f'{mode}.drain.time')).read().split()
    cpu_s = float(user) + float(sys_)
    tally = json.load(open(os.path.join(work, f'{mode}.drain.tally')))
    tally.pop('repartitioned', None); exp = dict(expected); exp.pop('repartitioned', None)
    rates[mode] = leads / secs
    print(f"| {mode} | {secs:.1f} | {leads/secs:,.0f} | {float(wall):.1f} | {cpu_s:.1f} | {cpu_s/leads*1e6:.1f} | {int(rss)//1024} | {'yes' if tally == exp else 'NO'} |")
print()
print(f"Exactly-once runs at {rates['exactly-once']/rates['at-least-once']:.2f}x the at-least-once throughput "
      f"(with the repartition hop in both); skipping the hop makes exactly-once {rates['exactly-once-no-repartition']/rates['exactly-once']:.2f}x faster.\n")
restored = [l for l in lines('exactly-once.restore.log') if 'dedupe state restored' in l]
keys = sum(int(re.search(r'keys=(\d+)', l).group(1)) for l in restored[-1:])
records = sum(int(re.search(r'records=(\d+)', l).group(1)) for l in restored)
millis = sum(int(re.search(r'millis=(\d+)', l).group(1)) for l in restored)
wall, user, sys_, rss = open(os.path.join(work, 'exactly-once.restore.time')).read().split()
print(f"Restore on restart: {records:,} changelog records into {keys:,} dedupe keys over 12 partitions in {millis/1000:.1f} s "
      f"({records/(millis/1000):,.0f} records/s); peak RSS of that run {int(rss)//1024} MiB.")
PY
rm -rf "$work"
