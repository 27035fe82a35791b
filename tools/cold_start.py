#!/usr/bin/env python3
"""Cold start of two commands, side by side: wall time and peak memory per process.

Every function's cold-start benchmark (`make bench`) uses it: a Rust function binary (A)
against its Python reference (B), e.g.

    python3 tools/cold_start.py \
        --rust "target/release/embeddings invoke events/embeddings/direct.json" \
        --python ".venv/bin/python functions/hosts/embeddings/benches/python_cold.py" \
        [-k 10] [--json target/bench/embeddings-cold-start.json]

    python3 tools/cold_start.py \
        --rust "target/release/faces invoke events/faces/direct.json" \
        --python ".venv/bin/python functions/hosts/faces/benches/opencv_cold.py events/data/photos/group.jpg" \
        --json target/bench/faces-cold-start.json

Each command line is split with shlex and started without a shell (so no
shell start-up is timed; set environment variables in this script's own
environment, e.g. after `eval "$(python3 tools/setup/bootstrap.py env)"`). After one
untimed warm-up each (page cache, not process state, is what a warm-up can
share), A and B run alternately K times, so slow drift on the machine hits
both alike. For each run: wall time from spawn to reap (perf_counter), the
child's CPU time (user + system, from os.wait4's usage, its threads included)
and its peak RSS (ru_maxrss, KiB on Linux). Standard library only. Exit status
1 if any run exited non-zero.

CPU time is reported beside wall time because the machine these run on is
shared: under load, wall time also counts the time a process waited for a CPU,
while CPU time is close to what a Lambda sandbox with a fraction of one vCPU
(0.58 at 1024 MB) spends before its first response.

--fresh-dir DIR (repeatable) starts every run, warm-up included, with DIR
removed and created again empty: point a command's writable cache there (e.g.
`env COLDPATH_OPTIMIZED_MODEL_DIR=DIR ...`) to time the cold start of a fresh
Lambda sandbox, whose /tmp is always empty, rather than a later cold start that
finds what an earlier one cached. `make bench` runs the packaged layout that way:

    python3 tools/cold_start.py --fresh-dir target/bench/sandbox-tmp \
        --rust "env COLDPATH_PREPARED_MODEL_DIR=target/bench/sandbox/embeddings/graphs \
                COLDPATH_OPTIMIZED_MODEL_DIR=target/bench/sandbox-tmp/graphs \
                target/release/embeddings invoke events/embeddings/direct.json" \
        --python ".venv/bin/python functions/hosts/embeddings/benches/python_cold.py"

Linux records, at exec, the high-water RSS of the memory image being replaced,
which for a child spawned here is this driver's. So a child's peak RSS reads
as at least the driver's own (about 15 MiB); it is exact above that, and the
report gives that floor. Keeping the driver small keeps the floor low.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

DEFAULT_JSON = Path("target/bench/cold-start.json")
WARMUP_RUNS = 1


def run_once(argv):
    """Spawn argv with stdout discarded; return (exit code, wall seconds, peak RSS KiB, CPU
    seconds)."""
    actions = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
    start = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
    # wait4, not waitpid: it also returns the child's resource usage.
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss, cpu


def empty(dirs):
    """Removes each directory and creates it again, empty (a fresh sandbox's /tmp)."""
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)


def measure(commands, runs, fresh_dirs=()):
    """Warm each command up, then run them alternately `runs` times, each run after emptying
    `fresh_dirs`.

    Returns ({label: {"wall_s": [...], "peak_rss_kib": [...], "cpu_s": [...]}}, number of
    failed runs).
    """
    results = {label: {"wall_s": [], "peak_rss_kib": [], "cpu_s": []} for label in commands}
    failures = 0
    schedule = [(label, False) for _ in range(WARMUP_RUNS) for label in commands]
    schedule += [(label, True) for _ in range(runs) for label in commands]
    for label, timed in schedule:
        empty(fresh_dirs)
        code, wall, rss, cpu = run_once(commands[label])
        if code != 0:
            failures += 1
            command = shlex.join(commands[label])
            print(f"cold_start: {label} exited {code}: {command}", file=sys.stderr)
        if timed:
            results[label]["wall_s"].append(wall)
            results[label]["peak_rss_kib"].append(rss)
            results[label]["cpu_s"].append(cpu)
    return results, failures


def summary(values):
    """min / median / max of a list."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def pair_ratio(a, b):
    """Median of the run-by-run ratios a[i]/b[i] (each pair ran back to back)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def cpu_model():
    """The CPU model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine():
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        # See the module docstring: children's peak RSS cannot read below this.
        "peak_rss_floor_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def report(commands, results, runs, fresh_dirs=()):
    """The JSON report: machine, commands, raw samples, summaries and A/B ratios."""
    a, b = (results[label] for label in commands)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "runs": runs,
        "warmup": WARMUP_RUNS,
        "fresh_dirs": [str(d) for d in fresh_dirs],
        "commands": {
            label: {
                "argv": commands[label],
                "wall_s": results[label]["wall_s"],
                "peak_rss_kib": results[label]["peak_rss_kib"],
                "cpu_s": results[label]["cpu_s"],
                "wall_s_summary": summary(results[label]["wall_s"]),
                "peak_rss_kib_summary": summary(results[label]["peak_rss_kib"]),
                "cpu_s_summary": summary(results[label]["cpu_s"]),
            }
            for label in commands
        },
        "ratio_a_over_b": {
            "wall": pair_ratio(a["wall_s"], b["wall_s"]),
            "peak_rss": pair_ratio(a["peak_rss_kib"], b["peak_rss_kib"]),
            "cpu": pair_ratio(a["cpu_s"], b["cpu_s"]),
        },
        # The 1-minute load average after the last run: how shared the machine was.
        "loadavg_1min": os.getloadavg()[0],
    }


def print_table(data):
    """Human-readable summary of the report on stdout."""
    print(f"{'':18} {'min':>10} {'median':>10} {'max':>10}")
    for label, cmd in data["commands"].items():
        wall, rss, cpu = cmd["wall_s_summary"], cmd["peak_rss_kib_summary"], cmd["cpu_s_summary"]
        print(f"{label + ' wall ms':18}" + "".join(f" {wall[k] * 1e3:10.1f}" for k in wall))
        print(f"{label + ' cpu ms':18}" + "".join(f" {cpu[k] * 1e3:10.1f}" for k in cpu))
        print(f"{label + ' peak RSS MiB':18}" + "".join(f" {rss[k] / 1024:10.1f}" for k in rss))
    ratio = data["ratio_a_over_b"]
    labels = "/".join(data["commands"])
    print(f"{labels} (median of pair ratios): time {ratio['wall']:.3f}x, "
          f"cpu {ratio['cpu']:.3f}x, memory {ratio['peak_rss']:.3f}x  [{data['runs']} runs each; "
          f"RSS floor {data['machine']['peak_rss_floor_kib'] / 1024:.1f} MiB; "
          f"load average {data['loadavg_1min']:.2f}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rust", required=True, help="command A")
    parser.add_argument("--python", required=True, help="command B")
    parser.add_argument("-k", "--runs", type=int, default=10, help="timed runs of each")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--fresh-dir", type=Path, action="append", default=[],
                        help="emptied before every run (a fresh sandbox's writable cache)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    commands = {"rust": shlex.split(args.rust), "python": shlex.split(args.python)}
    try:
        results, failures = measure(commands, args.runs, args.fresh_dir)
    except OSError as err:
        sys.exit(f"cold_start: cannot start a command: {err}")
    data = report(commands, results, args.runs, args.fresh_dir)
    print_table(data)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(f"cold_start: wrote {args.json}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
