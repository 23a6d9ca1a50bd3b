#!/usr/bin/env python3
"""Prints the side-by-side table from the load generator's JSON reports (one a line).

    report.py RESULTS_JSONL PAIRS FAN LATENCY_RATE IDLE CONNECT_N

Each figure is shown for Mosquitto and iotcore with the ratio iotcore / Mosquitto and the
target of that ratio. A load run several times (the latency rounds) shows the
median of its runs; a load that was not run has no row. Standard library only.
"""

import json
import statistics
import sys


def load(path):
    runs = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if line:
                run = json.loads(line)
                runs.setdefault((run["label"], run["broker"]), []).append(run)
    return runs


def main():
    path, pairs, fan, rate, idle, connect_n = sys.argv[1:]
    runs = load(path)

    def get(label, broker, *keys):
        values = []
        for value in runs.get((label, broker), []):
            if "error" in value:
                return None
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                return None
            values.append(value)
        return statistics.median(values) if values else None

    rows = []

    def row(name, label, keys, target, higher_is_better, mosquitto="mosquitto", unit="", iotcore_label=None):
        # A load left out of the run (side-by-side.sh --only) has no row.
        if (label, mosquitto) not in runs and (iotcore_label or label, "iotcore") not in runs:
            return
        m = get(label, mosquitto, *keys)
        i = get(iotcore_label or label, "iotcore", *keys)
        ratio = i / m if (m and i is not None) else None
        met = None
        if ratio is not None:
            met = ratio >= target if higher_is_better else ratio <= target
        rows.append((name, m, i, ratio, target, higher_is_better, met, unit))

    total = f"{int(pairs) * float(rate):.0f}"
    rounds = len(runs.get(("latency", "iotcore"), []))
    median = f", median of {rounds}" if rounds > 1 else ""
    row(f"QoS 0 pairs ({pairs} pairs, 64 B), delivered msg/s", "QoS 0 pairs", ["received_per_s"], 2.0, True)
    row(f"QoS 1 pairs ({pairs} pairs, 64 B), delivered msg/s", "QoS 1 pairs", ["received_per_s"], 1.5, True)
    row(f"fan-in {fan} → 1 (QoS 0), delivered msg/s", f"fan-in {fan} → 1", ["received_per_s"], 1.5, True)
    row(f"fan-out 1 → {fan} (QoS 0), delivered msg/s", f"fan-out 1 → {fan}", ["received_per_s"], 2.0, True)
    row(f"p99 latency at {total} msg/s, µs{median} (Mosquitto default)", "latency", ["latency_us", "p99"], 1.0, False)
    row(f"p99 latency at {total} msg/s, µs{median} (Mosquitto nodelay)", "latency", ["latency_us", "p99"], 1.0, False,
        mosquitto="mosquitto-nodelay")
    row(f"p50 latency at {total} msg/s, µs{median} (Mosquitto nodelay)", "latency", ["latency_us", "p50"], 1.0, False,
        mosquitto="mosquitto-nodelay")
    row(f"idle connections held (of {idle})", "idle", ["connected"], 1.0, True)
    row("broker memory per idle TCP connection, bytes", "idle", ["broker_bytes_per_connection"], 1.0, False)
    # Mosquitto's password check costs the same every time; iotcore's argon2id is paid on a
    # credential's first CONNECT (cold) and answered from its cache afterwards (warm).
    for phase, what in (("cold", "first connect"), ("warm", "reconnect")):
        row(f"connect rate, TCP + password, {what} ({connect_n}), /s", "connect rate", ["connects_per_s"], 1.0, True,
            iotcore_label=f"connect rate {phase}")
        row(f"connect latency p99, TCP + password, {what}, µs", "connect rate", ["connect_latency_us", "p99"], 1.0,
            False, iotcore_label=f"connect rate {phase}")
    row(f"connect rate, TLS + client certificate ({connect_n}), /s", "connect rate TLS", ["connects_per_s"], 1.0, True)
    row("connect latency p99, TLS + client certificate, µs", "connect rate TLS", ["connect_latency_us", "p99"], 1.0,
        False)

    def fmt(value):
        if value is None:
            return "n/a"
        if isinstance(value, float) and value < 100:
            return f"{value:.2f}"
        return f"{value:,.0f}"

    print(f"{'figure':<62} {'mosquitto':>12} {'iotcore':>12} {'ratio':>7}  target")
    for name, m, i, ratio, target, higher, met, _ in rows:
        sign = "≥" if higher else "≤"
        verdict = "" if met is None else ("met" if met else "NOT met")
        print(f"{name:<62} {fmt(m):>12} {fmt(i):>12} {fmt(ratio):>7}  {sign} {target} {verdict}")

    print("\nPer run: delivered/expected, load generator CPU (cores), broker CPU (cores)")
    for (label, broker), run in ((key, run) for key, each in runs.items() for run in each):
        if "error" in run:
            print(f"  {label:<16} {broker:<18} failed: {run['error']}")
        elif "received" in run:
            loss = run["received"] / run["expected"] * 100 if run["expected"] else 0
            broker_cpu = (run.get("broker_cpu") or {}).get("cores")
            print(f"  {label:<16} {broker:<18} {run['received']:>10}/{run['expected']:<10} ({loss:6.2f} %)"
                  f"  load {run['load_cpu']['cores']:.2f}  broker {fmt(broker_cpu)}"
                  f"  p50/p99/max {run['latency_us']['p50']}/{run['latency_us']['p99']}/{run['latency_us']['max']} µs")
        else:
            print(f"  {label:<16} {broker:<18} {run['connected']} connected, {run['failed']} failed,"
                  f" {run['connects_per_s']:.0f}/s, load {run['load_cpu']['cores']:.2f}"
                  + (f"; first error: {run['first_error']}" if run.get("first_error") else ""))


if __name__ == "__main__":
    main()
