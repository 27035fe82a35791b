#!/usr/bin/env python3
"""Load benchmark of coldpath-serve's embeddings, side by side in one run (`make bench-serve`).

Contenders, each a server on 127.0.0.1 with the same model, the same session options and the
same intra-op thread count (`BENCH_THREADS`, default 1, as the embeddings benchmark, so the
32-text figure compares with its floor). Each server is pinned to the same CPU (0) and wrk to
another (1), so every contender has one core whatever its threading (the Python server's
concurrent session runs would otherwise take the load generator's core):

- `serve`: target/release/coldpath-serve hosting embeddings, dynamic batching at its defaults;
- `one_at_a_time`: the same binary with `COLDPATH_SERVE_EMBEDDINGS_MAX_BATCH=1`, so the session
  runs one request at a time, as a Lambda sandbox does;
- `python`: shared/serve/benches/peer_server.py, an ONNX Runtime server in Python (threads, no
  batching) on the reference pipeline.

The load generator is wrk (Debian's package, one thread, `--latency`, a 60 s timeout so a slow
answer is timed rather than dropped), each point `BENCH_SECONDS`
(default 10; `BENCH_SECONDS_32`, default 30, for the 32-text body, whose batches last seconds,
so a short point would lose a large share of its work at its edges) after a 2-second warm-up
at the same concurrency, for two request bodies: one short
query ("photos of my dog at the beach last summer", the embeddings benchmark's query) and 32 texts
of about 20 words (the embeddings benchmark's batch), at concurrency 1, 4, 16 and 64. The
contenders take turns at each point so drift on a noisy machine hits all of them alike. Non-2xx
answers (429 when a queue is full) are counted and reported beside the throughput, which counts
only the 2xx answers. Resident memory of each server is read from /proc after its last point.

If target/bench/embeddings.json (the embeddings benchmark, `make bench`) exists, the 32-text p50
at concurrency 1 is compared with the raw batch floor it measured (the session alone on the
pre-tokenised batch). Results: stdout and target/bench/serve-load.json.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
QUERY = "photos of my dog at the beach last summer"
SUBJECTS = ["my grandmother", "two children", "a golden retriever", "the wedding party"]
ACTIONS = [
    "laughing together on a wooden bench",
    "walking slowly along the rocky coastline",
    "sharing a large birthday cake with candles",
    "posing in front of an old stone church",
    "playing football in a muddy green field",
    "watching fireworks over the harbour at night",
    "reading a map beside a rented red car",
    "cooking dinner over a small camp fire",
]
CONCURRENCY = [1, 4, 16, 64]


def batch_texts():
    """The embeddings benchmark's 32 texts (functions/embeddings/benches/embeddings.rs)."""
    return [
        f"A photo of {s} {a}, taken on day {i * 4 + j + 1} of our long family holiday in the mountains."
        for i, a in enumerate(ACTIONS)
        for j, s in enumerate(SUBJECTS)
    ]


def wait_ready(port, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on {port} not ready after {timeout} s")


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            yield line.split(":")[0], int(line.split()[1]) / 1024


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def pinned(cpu):
    """A preexec_fn that pins the child to one CPU (when the machine has more than one)."""
    return (lambda: os.sched_setaffinity(0, {cpu})) if os.cpu_count() > 1 else None


def wrk(port, script, concurrency, seconds):
    """One wrk run; returns throughput of 2xx answers, p50/p99 latency, and the non-2xx count."""
    out = subprocess.run(
        ["taskset", "-c", "1" if os.cpu_count() > 1 else "0", "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s", "--latency", "-s", script,
         f"http://127.0.0.1:{port}/v1/embeddings"],
        check=True, capture_output=True, text=True,
    ).stdout
    total = int(re.search(r"(\d+) requests in ([\d.]+)(s|m)", out).group(1))
    elapsed = re.search(r"requests in ([\d.]+)(ms|s|m)", out)
    elapsed_s = float(elapsed.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[elapsed.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = int(bad.group(1)) if bad else 0
    errors = re.search(r"Socket errors: (.*)", out)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    if total == 0:
        # Nothing finished within the point (each answer would take longer than it): no latency.
        return {"requests_per_s": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0,
                "non_2xx": 0, "socket_errors": errors.group(1) if errors else None}
    return {
        "requests_per_s": (total - bad) / elapsed_s,
        "p50_ms": to_ms(pct["50"]),
        "p99_ms": to_ms(pct["99"]),
        "requests": total,
        "non_2xx": bad,
        "socket_errors": errors.group(1) if errors else None,
    }


def main() -> int:
    threads = int(os.environ.get("BENCH_THREADS", "1"))
    seconds = int(os.environ.get("BENCH_SECONDS", "10"))
    seconds_by_body = {"short_query": seconds, "texts_32": int(os.environ.get("BENCH_SECONDS_32", "30"))}
    model_dir = Path(os.environ["EMBEDDINGS_MODEL_SOURCE"])
    serve_bin = REPO / "target" / "release" / "coldpath-serve"
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    bodies = {
        "short_query": {"input": QUERY, "model": "all-MiniLM-L6-v2"},
        "texts_32": {"input": batch_texts(), "model": "all-MiniLM-L6-v2"},
    }
    scripts = {}
    for name, body in bodies.items():
        script = work / f"{name}.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{json.dumps(body)}]==]\n"
        )
        scripts[name] = str(script)

    base_env = dict(os.environ, COLDPATH_INTRA_THREADS=str(threads), COLDPATH_SERVE_HOST="127.0.0.1",
                    COLDPATH_SERVE_WORKLOADS="embeddings", RUST_LOG="warn")
    contenders = {
        "serve": ([str(serve_bin)], dict(base_env, PORT="8181")),
        "one_at_a_time": ([str(serve_bin)],
                          dict(base_env, PORT="8182", COLDPATH_SERVE_EMBEDDINGS_MAX_BATCH="1")),
        "python": ([sys.executable, str(Path(__file__).with_name("peer_server.py")), "--port", "8183",
                    "--model", str(model_dir / "model.onnx"), "--tokenizer",
                    str(model_dir / "tokenizer.json"), "--threads", str(threads)], dict(os.environ)),
    }
    ports = {"serve": 8181, "one_at_a_time": 8182, "python": 8183}
    procs = {}
    try:
        for name, (argv, env) in contenders.items():
            procs[name] = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                           stderr=open(work / f"{name}.log", "w"), preexec_fn=pinned(0))
            wait_ready(ports[name], procs[name])
        results = {name: {} for name in contenders}
        print(f"serve load benchmark: {threads} intra-op thread(s), servers on CPU 0, wrk -t1 on CPU 1, "
              f"{seconds_by_body} s a point", flush=True)
        for body in bodies:
            for c in CONCURRENCY:
                for name in contenders:
                    wrk(ports[name], scripts[body], c, 2)  # warm-up at this concurrency
                    r = wrk(ports[name], scripts[body], c, seconds_by_body[body])
                    results[name].setdefault(body, {})[str(c)] = r
                    lat = ("no answer within the point" if r["p50_ms"] is None else
                           f"p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms")
                    print(f"{body:<12} c={c:<3} {name:<14} {r['requests_per_s']:8.1f} req/s  {lat}  "
                          f"non-2xx {r['non_2xx']}", flush=True)
        memory = {name: dict(rss_mib(p.pid)) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    summary = {}
    q16 = {n: results[n]["short_query"]["16"] for n in contenders}
    summary["short_query_c16_over_one_at_a_time_c1"] = (
        q16["serve"]["requests_per_s"] / results["one_at_a_time"]["short_query"]["1"]["requests_per_s"])
    summary["short_query_c16_over_one_at_a_time_c16"] = (
        q16["serve"]["requests_per_s"] / q16["one_at_a_time"]["requests_per_s"])
    summary["short_query_c16_over_python_c16"] = q16["serve"]["requests_per_s"] / q16["python"]["requests_per_s"]
    summary["short_query_c16_p99_ms"] = q16["serve"]["p99_ms"]
    emb = REPO / "target" / "bench" / "embeddings.json"
    if emb.is_file():
        e = json.loads(emb.read_text())
        floor_tps = e.get("batch32_throughput_texts_per_s", {}).get("floor")
        if floor_tps and e.get("threads") == threads:
            floor_ms = 32 / floor_tps * 1e3
            summary["texts_32_floor_ms"] = floor_ms
            summary["texts_32_c1_p50_over_floor"] = results["serve"]["texts_32"]["1"]["p50_ms"] / floor_ms
            summary["floor_from"] = f"{emb.relative_to(REPO)} ({e.get('machine')})"
        else:
            summary["floor_from"] = f"{emb.relative_to(REPO)} measured at another thread count: not compared"
    print("\nsummary:", json.dumps(summary, indent=1))
    print("resident memory (MiB):", json.dumps(memory))
    machine = {"cpu_count": os.cpu_count(), "load_avg": os.getloadavg()}
    try:
        machine["cpu_model"] = next(l.split(":", 1)[1].strip() for l in
                                    Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except StopIteration:
        pass
    out = REPO / "target" / "bench" / "serve-load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "serve-load", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine, "threads": threads, "seconds_per_point": seconds_by_body,
        "pinning": "servers on CPU 0, wrk on CPU 1",
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[:1],
        "results": results, "summary": summary, "resident_mib": memory,
    }, indent=1))
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
