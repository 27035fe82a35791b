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
- `python`: functions/hosts/serve/benches/peer_server.py, an ONNX Runtime server in Python (threads, no
  batching) on the reference pipeline;
- an extra contender, any OpenAI-compatible embeddings server (`POST /v1/embeddings`,
  `{"input": str | [str]}`): `BENCH_CONTENDER_CMD` is its command line (split as a shell would,
  `{port}` replaced by `BENCH_CONTENDER_PORT`, default 8184), started by the bench pinned to CPU 0
  like the others, awaited (a probe embedding answered 200, within `BENCH_CONTENDER_READY_S`,
  default 300 s) and stopped at the end; or `BENCH_CONTENDER_URL` (http://127.0.0.1:PORT or
  http://localhost:PORT, with or without `/v1/embeddings`), a server already running, which the
  bench neither starts, pins nor stops. `BENCH_CONTENDER_NAME` (default `contender`) names it in
  the tables. Its thread count is the command's business (pinned to one CPU, servers that size
  their pools from the CPUs they may use get one).

Before any load, every contender is asked for the embeddings of both bodies: each answer must be
`data` with one vector per text, all of serve's dimension, or the bench stops; the cosine of each
vector against serve's for the same text (min and mean) is printed and recorded.

`BENCH_CONTENDERS` (comma-separated names, default all) runs a subset, `BENCH_BODIES`
(short_query,texts_32) and `BENCH_CONCURRENCY` (default 1,4,16,64) a subset of the points, and `BENCH_ROUNDS` (default 1) measures each point
that many times, the contenders taking turns within each round; each figure is then the median
of the rounds (every round is kept in the JSON).

The load generator is wrk (Debian's package, one thread, `--latency`, a 60 s timeout so a slow
answer is timed rather than dropped), each point `BENCH_SECONDS`
(default 10; `BENCH_SECONDS_32`, default 30, for the 32-text body, whose batches last seconds,
so a short point would lose a large share of its work at its edges) after a 2-second warm-up
at the same concurrency, for two request bodies: one short
query ("photos of my dog at the beach last summer", the embeddings benchmark's query) and 32 texts
of about 20 words (the embeddings benchmark's batch), at concurrency 1, 4, 16 and 64. The
contenders take turns at each point so drift on a noisy machine hits all of them alike, each
round starting one contender later, and each server the bench started is left to go idle before
the next one's turn. Non-2xx
answers (429 when a queue is full) are counted and reported beside the throughput, which counts
only the 2xx answers. Resident memory of each server is read from /proc after its last point.

Beside the short-query points, each round also measures the raw batch floor (`floor`, built from
functions/hosts/serve/examples/floor.rs; `BENCH_FLOOR=0` leaves it out): the server's own session,
loaded from the same settings and pinned to the same CPU, run back to back on a pre-tokenised batch
of c short queries, timing only the session run. At concurrency c every client has one query in
flight, so c is the largest batch serve can form, and the floor's texts a second are what the
model alone does with that batch; `short_query_c<c>_serve_over_floor` in the summary is serve's
throughput over it. Every figure carries the 1-minute load average when it was taken, and each
server the bench started (and the floor) its CPU time over the point: requests per CPU-second,
which compares one core's work when other work shares that core
(`short_query_c<c>_serve_over_floor_per_cpu_s`). For coldpath-serve it also reads `/metrics`
around each point: the texts its batches held on average (`texts_per_batch`), which says
whether a shortfall against the floor is the batches' size or the work around the model.

If target/bench/embeddings.json (the embeddings benchmark, `make bench`) exists, the 32-text p50
at concurrency 1 is compared with the raw batch floor it measured (the session alone on the
pre-tokenised batch). Results: stdout and target/bench/serve-load.json.
"""

import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[4]
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
    """The embeddings benchmark's 32 texts (functions/hosts/embeddings/benches/embeddings.rs)."""
    return [
        f"A photo of {s} {a}, taken on day {i * 4 + j + 1} of our long family holiday in the mountains."
        for i, a in enumerate(ACTIONS)
        for j, s in enumerate(SUBJECTS)
    ]


def post_json(url, body, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def wait_ready(url, proc, timeout=120):
    """Until the server at `url` (its /v1/embeddings) embeds a probe text: any OpenAI-compatible
    server, whatever its own health route; `proc` is None for a server the bench did not start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if post_json(url, {"input": "ready?", "model": "all-MiniLM-L6-v2"}, timeout=10)[0] == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server for {url} not ready after {timeout} s")


def embeddings_of(url, body):
    """The vectors a server answers for `body`, checked for shape: one list of floats per text,
    in input order (by `index` when given)."""
    texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
    status, answer = post_json(url, body)
    data = answer.get("data") if isinstance(answer, dict) else None
    if status != 200 or not isinstance(data, list) or len(data) != len(texts):
        raise RuntimeError(f"{url}: expected {len(texts)} embeddings, got status {status}, "
                           f"{type(data).__name__} of {len(data) if isinstance(data, list) else '-'}")
    if all(isinstance(d.get("index"), int) for d in data):
        data = sorted(data, key=lambda d: d["index"])
    vectors = [d.get("embedding") for d in data]
    if not all(isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v) for v in vectors):
        raise RuntimeError(f"{url}: an embedding is not a list of numbers")
    if len({len(v) for v in vectors}) != 1:
        raise RuntimeError(f"{url}: embeddings of different lengths {sorted({len(v) for v in vectors})}")
    return vectors


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


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


def cpu_seconds(pid):
    """CPU time a process has used, all its threads (utime + stime from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_totals(url):
    """coldpath-serve's embeddings batches so far, (items, batches) from its /metrics; None for a
    server without them (any other contender)."""
    metrics = url.rsplit("/v1/", 1)[0] + "/metrics"
    try:
        with urllib.request.urlopen(metrics, timeout=10) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return None
    found = dict(re.findall(r'^coldpath_serve_batch_items_(sum|count)\{model="embeddings"\} (\S+)$', text, re.M))
    return (float(found["sum"]), float(found["count"])) if len(found) == 2 else None


def settle(proc, timeout=120):
    """Until a server the bench started is idle (under 10 ms of CPU in 250 ms), at most
    `timeout` seconds; the seconds waited."""
    if proc is None:
        return 0.0
    started = time.monotonic()
    before = cpu_seconds(proc.pid)
    while time.monotonic() - started < timeout:
        time.sleep(0.25)
        now = cpu_seconds(proc.pid)
        if now - before < 0.01:
            break
        before = now
    return time.monotonic() - started


def timed_wrk(url, script, concurrency, seconds, proc):
    """wrk at one point, plus the server's CPU time over it when the bench started the server:
    requests per CPU-second of the server, the figure that holds when other work shares its core;
    and for coldpath-serve the texts its batches held on average over the point."""
    before = cpu_seconds(proc.pid) if proc is not None else None
    batches_before = batch_totals(url)
    r = wrk(url, script, concurrency, seconds)
    if before is not None:
        used = cpu_seconds(proc.pid) - before
        r["server_cpu_s"] = used
        r["requests_per_cpu_s"] = (r["requests"] - r["non_2xx"]) / used if used > 0 else None
    batches_after = batch_totals(url)
    if batches_before and batches_after and batches_after[1] > batches_before[1]:
        r["texts_per_batch"] = (batches_after[0] - batches_before[0]) / (batches_after[1] - batches_before[1])
    return r


def wrk(url, script, concurrency, seconds):
    """One wrk run; returns throughput of 2xx answers, p50/p99 latency, and the non-2xx count."""
    out = subprocess.run(
        ["taskset", "-c", "1" if os.cpu_count() > 1 else "0", "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s", "--latency", "-s", script,
         url],
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
        return {"load_avg_1m": os.getloadavg()[0], "requests_per_s": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0,
                "non_2xx": 0, "socket_errors": errors.group(1) if errors else None}
    return {
        "load_avg_1m": os.getloadavg()[0],
        "requests_per_s": (total - bad) / elapsed_s,
        "p50_ms": to_ms(pct["50"]),
        "p99_ms": to_ms(pct["99"]),
        "requests": total,
        "non_2xx": bad,
        "socket_errors": errors.group(1) if errors else None,
    }


def floor_point(binary, env, batch, seconds):
    """The raw batch floor at one point (examples/floor.rs): the server's own session run back to
    back on a pre-tokenised batch of `batch` short queries, pinned to CPU 0 like the servers. At
    concurrency c each client has one query in flight, so c is the largest batch serve can form;
    texts a second are requests a second."""
    out = subprocess.run([str(binary), str(batch), str(seconds)], env=env, check=True, capture_output=True,
                         text=True, preexec_fn=pinned(0)).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"load_avg_1m": os.getloadavg()[0], "requests_per_s": r["texts_per_s"], "p50_ms": r["ms_per_run"],
            "p99_ms": None, "requests": r["runs"] * batch, "non_2xx": 0, "socket_errors": None,
            "batch": batch, "runs": r["runs"], "server_cpu_s": r.get("cpu_seconds"),
            "requests_per_cpu_s": r.get("texts_per_cpu_s")}


def check_answers(urls, bodies):
    """Every contender's vectors for both bodies: shape checked, cosine against serve's (the first
    contender's when serve does not run) per text. Stops the bench on a malformed answer."""
    reference = "serve" if "serve" in urls else next(iter(urls))
    try:
        vectors = {name: {body: embeddings_of(url, bodies[body]) for body in bodies} for name, url in urls.items()}
    except (RuntimeError, OSError, ValueError, AttributeError) as e:
        raise SystemExit(f"an answer is not OpenAI-shaped embeddings: {e}")
    answers = {}
    for name in urls:
        dims = {len(v[0]) for v in vectors[name].values()}
        ref_dim = len(next(iter(vectors[reference].values()))[0])
        if dims != {ref_dim}:
            raise SystemExit(f"{name}: embeddings of dimension {sorted(dims)}, {reference}'s are {ref_dim}")
        cos = [cosine(a, b) for body in bodies for a, b in zip(vectors[name][body], vectors[reference][body])]
        answers[name] = {"dimension": ref_dim, "texts": len(cos), "against": reference,
                         "cosine_min": min(cos), "cosine_mean": statistics.fmean(cos)}
        print(f"answers {name:<14} {len(cos)} texts, dimension {ref_dim}, cosine against {reference}: "
              f"min {min(cos):.6f} mean {statistics.fmean(cos):.6f}", flush=True)
    return answers


def median_of(rounds):
    """One point's figures from its rounds: the median of each figure, every round kept."""
    if len(rounds) == 1:
        return dict(rounds[0])
    out = {"requests_per_s": statistics.median(r["requests_per_s"] for r in rounds)}
    per_cpu = [r["requests_per_cpu_s"] for r in rounds if r.get("requests_per_cpu_s")]
    out["requests_per_cpu_s"] = statistics.median(per_cpu) if per_cpu else None
    out["load_avg_1m"] = [r.get("load_avg_1m") for r in rounds]
    per_batch = [r["texts_per_batch"] for r in rounds if r.get("texts_per_batch")]
    out["texts_per_batch"] = statistics.median(per_batch) if per_batch else None
    for key in ("p50_ms", "p99_ms"):
        values = [r[key] for r in rounds if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["requests"] = sum(r["requests"] for r in rounds)
    out["non_2xx"] = sum(r["non_2xx"] for r in rounds)
    out["socket_errors"] = [r["socket_errors"] for r in rounds if r["socket_errors"]] or None
    out["rounds"] = rounds
    return out


def contender_url(text):
    """BENCH_CONTENDER_URL as the embeddings route; load tests stay on this machine."""
    parts = urlsplit(text)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
        raise SystemExit(f"BENCH_CONTENDER_URL={text!r}: expected http://127.0.0.1:PORT (a server on this machine)")
    path = parts.path.rstrip("/")
    return f"http://127.0.0.1:{parts.port}" + (path if path.endswith("/v1/embeddings") else path + "/v1/embeddings")


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
    chosen_bodies = os.environ.get("BENCH_BODIES", "").strip()
    if chosen_bodies:
        wanted = [b.strip() for b in chosen_bodies.split(",") if b.strip()]
        if not wanted or set(wanted) - set(bodies):
            raise SystemExit(f"BENCH_BODIES={chosen_bodies!r}: expected some of {list(bodies)}")
        bodies = {b: bodies[b] for b in bodies if b in wanted}
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
    # name -> (argv or None for a server already running, environment, embeddings URL)
    contenders = {
        "serve": ([str(serve_bin)], dict(base_env, PORT="8181"), "http://127.0.0.1:8181/v1/embeddings"),
        "one_at_a_time": ([str(serve_bin)],
                          dict(base_env, PORT="8182", COLDPATH_SERVE_EMBEDDINGS_MAX_BATCH="1"),
                          "http://127.0.0.1:8182/v1/embeddings"),
        "python": ([sys.executable, str(Path(__file__).with_name("peer_server.py")), "--port", "8183",
                    "--model", str(model_dir / "model.onnx"), "--tokenizer",
                    str(model_dir / "tokenizer.json"), "--threads", str(threads)], dict(os.environ),
                   "http://127.0.0.1:8183/v1/embeddings"),
    }
    extra_name = os.environ.get("BENCH_CONTENDER_NAME", "contender")
    extra_cmd = os.environ.get("BENCH_CONTENDER_CMD", "").strip()
    extra_url = os.environ.get("BENCH_CONTENDER_URL", "").strip()
    if extra_cmd and extra_url:
        raise SystemExit("set BENCH_CONTENDER_CMD (the bench starts it) or BENCH_CONTENDER_URL (already running), not both")
    if extra_name in contenders and (extra_cmd or extra_url):
        raise SystemExit(f"BENCH_CONTENDER_NAME={extra_name!r} is taken by a built-in contender")
    if extra_cmd:
        port = int(os.environ.get("BENCH_CONTENDER_PORT", "8184"))
        contenders[extra_name] = ([a.replace("{port}", str(port)) for a in shlex.split(extra_cmd)],
                                  dict(os.environ), f"http://127.0.0.1:{port}/v1/embeddings")
    elif extra_url:
        contenders[extra_name] = (None, None, contender_url(extra_url))
    started_by_bench = {name: argv is not None for name, (argv, _, _) in contenders.items()}
    chosen = os.environ.get("BENCH_CONTENDERS", "").strip()
    if chosen:
        wanted = [n.strip() for n in chosen.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in contenders]
        if unknown:
            raise SystemExit(f"BENCH_CONTENDERS: unknown {unknown}; known {list(contenders)}")
        contenders = {n: contenders[n] for n in contenders if n in wanted}
    # The raw batch floor beside the short-query points (BENCH_FLOOR=0 leaves it out).
    floor_bin = REPO / "target" / "release" / "examples" / "floor"
    with_floor = os.environ.get("BENCH_FLOOR", "1") != "0" and "short_query" in bodies
    if with_floor and not floor_bin.is_file():
        raise SystemExit(f"{floor_bin} is missing: cargo build --release -p coldpath-serve --example floor")
    concurrency = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", ",".join(map(str, CONCURRENCY))).split(",")]
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    ready_s = float(os.environ.get("BENCH_CONTENDER_READY_S", "300"))
    urls = {name: url for name, (_, _, url) in contenders.items()}
    procs = {}
    try:
        for name, (argv, env, url) in contenders.items():
            if argv is not None:
                procs[name] = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                               stderr=open(work / f"{name}.log", "w"), preexec_fn=pinned(0))
            try:
                wait_ready(url, procs.get(name), timeout=ready_s if name == extra_name else 120)
            except RuntimeError as e:
                log = work / f"{name}.log"
                tail = log.read_text()[-2000:] if log.is_file() else ""
                raise SystemExit(f"{name}: {e}\n{tail}")
        answers = check_answers(urls, bodies)
        results = {name: {} for name in contenders}
        print(f"serve load benchmark: {threads} intra-op thread(s), servers on CPU 0, wrk -t1 on CPU 1, "
              f"{seconds_by_body} s a point, {rounds} round(s) a point (median)", flush=True)
        for name, started in started_by_bench.items():
            if name in contenders and not started:
                print(f"  {name}: {urls[name]}, already running: not started, pinned or stopped by the bench")
        for body in bodies:
            for c in concurrency:
                points = {name: [] for name in contenders}
                if with_floor and body == "short_query":
                    points["floor"] = []
                for k in range(rounds):
                    # Each round starts one contender later, so no one always follows the same
                    # neighbour (the first of a round measured up to 10% low on this VM).
                    turns = list(points)[k % len(points):] + list(points)[:k % len(points)]
                    for name in turns:
                        if name == "floor":
                            points["floor"].append(floor_point(floor_bin, base_env, c, seconds_by_body[body]))
                            continue
                        wrk(urls[name], scripts[body], c, 2)  # warm-up at this concurrency
                        points[name].append(timed_wrk(urls[name], scripts[body], c, seconds_by_body[body],
                                                      procs.get(name)))
                        # A server still working off requests wrk left behind (the Python peer
                        # at 32 texts and concurrency 64) would take the next one's core.
                        settle(procs.get(name))
                for name in points:
                    r = median_of(points[name])
                    results.setdefault(name, {}).setdefault(body, {})[str(c)] = r
                    lat = ("no answer within the point" if r["p50_ms"] is None else
                           f"{r['p50_ms']:8.2f} ms a run of {c}" if name == "floor" else
                           f"p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms")
                    digits = 2 if r["requests_per_s"] < 10 else 1
                    spread = ("" if rounds == 1 else "  rounds " +
                              "/".join(f"{x['requests_per_s']:.{digits}f}" for x in points[name]))
                    if r.get("requests_per_cpu_s"):
                        spread += f"  {r['requests_per_cpu_s']:.{digits}f} a CPU-second"
                    if r.get("texts_per_batch"):
                        spread += f"  {r['texts_per_batch']:.1f} texts a batch"
                    spread += "  load " + "/".join(f"{x.get('load_avg_1m', 0):.1f}" for x in points[name])
                    print(f"{body:<12} c={c:<3} {name:<14} {r['requests_per_s']:8.{digits}f} req/s  {lat}  "
                          f"non-2xx {r['non_2xx']}{spread}", flush=True)
        memory = {name: dict(rss_mib(p.pid)) for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def rps(name, body, c):
        return results.get(name, {}).get(body, {}).get(str(c), {}).get("requests_per_s")

    def ratio(key, a, b):
        if a and b:
            summary[key] = a / b

    summary = {}
    ratio("short_query_c16_over_one_at_a_time_c1", rps("serve", "short_query", 16), rps("one_at_a_time", "short_query", 1))
    ratio("short_query_c16_over_one_at_a_time_c16", rps("serve", "short_query", 16), rps("one_at_a_time", "short_query", 16))
    ratio("short_query_c16_over_python_c16", rps("serve", "short_query", 16), rps("python", "short_query", 16))
    def per_cpu(name, body, c):
        return results.get(name, {}).get(body, {}).get(str(c), {}).get("requests_per_cpu_s")

    for c in concurrency:
        ratio(f"short_query_c{c}_serve_over_floor", rps("serve", "short_query", c), rps("floor", "short_query", c))
        ratio(f"short_query_c{c}_serve_over_floor_per_cpu_s", per_cpu("serve", "short_query", c),
              per_cpu("floor", "short_query", c))
        for body in bodies:
            ratio(f"{body}_c{c}_serve_over_one_at_a_time", rps("serve", body, c), rps("one_at_a_time", body, c))
    if "serve" in results and "16" in results["serve"].get("short_query", {}):
        summary["short_query_c16_p99_ms"] = results["serve"]["short_query"]["16"]["p99_ms"]
    if extra_name in results:
        for body in bodies:
            for c in concurrency:
                ratio(f"{body}_c{c}_serve_over_{extra_name}", rps("serve", body, c), rps(extra_name, body, c))
    emb = REPO / "target" / "bench" / "embeddings.json"
    if emb.is_file():
        e = json.loads(emb.read_text())
        floor_tps = e.get("batch32_throughput_texts_per_s", {}).get("floor")
        if floor_tps and e.get("threads") == threads:
            floor_ms = 32 / floor_tps * 1e3
            summary["texts_32_floor_ms"] = floor_ms
            if rps("serve", "texts_32", 1):
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
        "rounds_per_point": rounds, "answers": answers,
        "contenders": {name: {"url": urls[name], "started_by_bench": started_by_bench[name],
                              "command": contenders[name][0]} for name in contenders},
        "results": results, "summary": summary, "resident_mib": memory,
    }, indent=1))
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
