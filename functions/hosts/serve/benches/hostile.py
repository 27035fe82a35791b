#!/usr/bin/env python3
"""Hostile-load benchmark of coldpath-serve (`make bench-serve-hostile`; `make bench-serve` runs it
after the load benchmark). The release binary on 127.0.0.1, hosting both workloads, pinned to CPU 0;
the clients here, on CPU 1. Four scenes, each reported as figures (the short versions are tests in
`make test`: functions/hosts/serve/tests/serve.rs):

1. flood: `BENCH_FLOOD_CLIENTS` (40) clients post 30 MB faces bodies at once against a faces queue of
   4 and batches of 1, with `Expect: 100-continue` (as curl sends large uploads): how many were
   refused unread (429 before any body byte was asked for), and the server's peak memory growth
   against the bound its configuration states (`ServeConfig::faces_memory_bound`, which the
   server logs at start as `faces_memory_bound_bytes`);
2. slow heads: `BENCH_SLOW_CLIENTS` (500) connections that send half a request head and stall: the
   latency of a normal embeddings query (p50/p99 of `BENCH_PROBES`, 200, one at a time) before and
   while they hang, and how long until the server has closed every one of them (read timeout
   `BENCH_READ_TIMEOUT_MS`, 2000);
3. abort marker: the release binary has no fault injection, so this scene times the isolation
   itself: an iPhone HEIC decoded through the pod's faces route, first (starts a decoder child)
   and after;
4. (a stuck model call is a test only: it needs a deliberately slow model call.)
5. text flood: `BENCH_TEXT_CLIENTS` (200) clients post the largest embeddings request at once (one
   text filling the default 1 MiB body limit, shaped to cost the tokenizer most: `"a!"` repeated,
   one token a byte) against the default queue (512) and batches, on a server hosting embeddings
   at its defaults: the server's peak memory growth against the bound it states
   (`ServeConfig::memory_bound`: `text_memory_bound_bytes` and the connections' buffers and
   unread answers, logged as `in_flight_memory_bound_bytes` once the models are loaded).

Results: stdout and target/bench/serve-hostile.json.
"""

import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(Path(__file__).parent))
from load import pinned, wait_ready  # noqa: E402

PORT = 8191
URL = f"http://127.0.0.1:{PORT}/v1/embeddings"


def peak_rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def post(path, body, timeout=120):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def read_head(s):
    """Reads up to the end of one response head (one byte at a time: what follows stays unread)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def upload_expecting_continue(body, out):
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall((f"POST /v1/faces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode())
    head = read_head(s)
    asked = head.startswith(b"HTTP/1.1 100")
    if asked:
        s.sendall(body)
        head = read_head(s)
    out.append((asked, int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1") else 0))
    s.close()


def stated_bound(log: Path, field="faces_memory_bound_bytes") -> int:
    """A bound the server states from its configuration (`ServeConfig::faces_memory_bound`,
    `ServeConfig::memory_bound`), read from its log rather than computed again here."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())  # the log's colours, if any
    match = re.search(rf"{field}=(?:Some\()?(\d+)", text)
    if not match:
        raise SystemExit(f"coldpath-serve logged no {field} in {log}")
    return int(match.group(1))


def post_raw(path, body, out, timeout=600):
    """Posts `body` (bytes) and records the answer's status."""
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            out.append(r.status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
    except OSError:
        out.append(0)


def flood(clients, target, *args):
    """`clients` threads calling `target(*args)` at once; the seconds until the last is done."""
    threads = [threading.Thread(target=target, args=args) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def probe_latencies(n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, _ = post("/v1/embeddings", {"input": "photos of my dog at the beach last summer"})
        assert status == 200, status
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}


def main() -> int:
    if os.cpu_count() > 1:
        os.sched_setaffinity(0, {1})
    clients = int(os.environ.get("BENCH_FLOOD_CLIENTS", "40"))
    slow = int(os.environ.get("BENCH_SLOW_CLIENTS", "500"))
    probes = int(os.environ.get("BENCH_PROBES", "200"))
    read_timeout_ms = int(os.environ.get("BENCH_READ_TIMEOUT_MS", "2000"))
    queue, max_batch, max_connections = 4, 1, 1024
    env = dict(os.environ, COLDPATH_SERVE_HOST="127.0.0.1", PORT=str(PORT), RUST_LOG="warn,coldpath_serve=info",
               COLDPATH_INTRA_THREADS="1", COLDPATH_SERVE_FACES_QUEUE=str(queue),
               COLDPATH_SERVE_FACES_MAX_BATCH=str(max_batch), COLDPATH_IMAGE_MAX_PIXELS="1000000",
               COLDPATH_SERVE_READ_TIMEOUT_MS=str(read_timeout_ms),
               COLDPATH_SERVE_MAX_CONNECTIONS=str(max_connections),
               COLDPATH_OBJECT_STORE=f"local:{REPO / 'events/data'}")
    work = Path(tempfile.mkdtemp(prefix="serve-hostile-"))
    proc = subprocess.Popen([str(REPO / "target/release/coldpath-serve")], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "serve.log", "w"), preexec_fn=pinned(0))
    results = {"machine": {"cpus": os.cpu_count()}, "read_timeout_ms": read_timeout_ms}
    try:
        wait_ready(URL, proc)
        cat = base64.b64encode((REPO / "events/data/photos/cat.jpg").read_bytes()).decode()
        assert post("/v1/faces", {"image": {"base64": cat}})[0] == 200

        # 1. Flood.
        before = peak_rss(proc.pid)
        body = json.dumps({"image": {"base64": "A" * (30_000_000 - 64)}}).encode()
        outcomes = []
        seconds = flood(clients, upload_expecting_continue, body, outcomes)
        grown = peak_rss(proc.pid) - before
        bound = stated_bound(work / "serve.log")
        results["flood"] = {
            "clients": clients, "body_mb": 30, "seconds": seconds,
            "read_then_400": sum(1 for a, s in outcomes if a and s == 400),
            "refused_unread_429": sum(1 for a, s in outcomes if not a and s == 429),
            "other": sum(1 for a, s in outcomes if (a, s) not in ((True, 400), (False, 429))),
            "peak_growth_mib": grown / 2**20, "stated_bound_mib": bound / 2**20,
        }
        print("flood:", json.dumps(results["flood"]), flush=True)

        # 2 and 3 run at the default image limits (the flood's pixel cap would refuse the HEIC).
        proc.terminate()
        proc.wait(timeout=60)
        env.pop("COLDPATH_IMAGE_MAX_PIXELS")
        proc = subprocess.Popen([str(REPO / "target/release/coldpath-serve")], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(work / "serve2.log", "w"),
                                preexec_fn=pinned(0))
        wait_ready(URL, proc)

        # 2. Slow heads.
        quiet = probe_latencies(probes)
        hung = []
        for _ in range(slow):
            s = socket.create_connection(("127.0.0.1", PORT))
            s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-")
            hung.append(s)
        opened = time.perf_counter()
        loaded = probe_latencies(probes)
        for s in hung:
            s.settimeout(60)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
        all_closed_s = time.perf_counter() - opened
        for s in hung:
            s.close()
        results["slow_heads"] = {"connections": slow, "quiet": quiet, "while_hung": loaded,
                                 "all_closed_after_s": all_closed_s}
        print("slow heads:", json.dumps(results["slow_heads"]), flush=True)

        # 3. HEIC through the decoder child.
        heic = base64.b64encode((REPO / "events/data/photos/IMG_0001.HEIC").read_bytes()).decode()
        times = []
        for _ in range(11):
            t = time.perf_counter()
            status, _ = post("/v1/faces", {"image": {"base64": heic}})
            assert status == 200, status
            times.append((time.perf_counter() - t) * 1e3)
        results["heic_faces"] = {"first_ms": times[0], "median_after_ms": percentile(times[1:], 50)}
        print("heic faces request:", json.dumps(results["heic_faces"]), flush=True)

        # 5. Text flood, on a server hosting embeddings at its defaults.
        proc.terminate()
        proc.wait(timeout=60)
        text_env = dict(env, COLDPATH_SERVE_WORKLOADS="embeddings")
        for k in ("COLDPATH_SERVE_FACES_QUEUE", "COLDPATH_SERVE_FACES_MAX_BATCH"):
            text_env.pop(k, None)
        proc = subprocess.Popen([str(REPO / "target/release/coldpath-serve")], env=text_env,
                                stdout=subprocess.DEVNULL, stderr=open(work / "serve3.log", "w"),
                                preexec_fn=pinned(0))
        wait_ready(URL, proc)
        text_clients = int(os.environ.get("BENCH_TEXT_CLIENTS", "200"))
        limit = 1 << 20
        body = json.dumps({"input": "a!" * ((limit - 64) // 2)}).encode()
        settle = []
        post_raw("/v1/embeddings", body, settle)
        assert settle == [200], settle
        before = peak_rss(proc.pid)
        statuses = []
        seconds = flood(text_clients, post_raw, "/v1/embeddings", body, statuses)
        grown = peak_rss(proc.pid) - before
        log = work / "serve3.log"
        results["text_flood"] = {
            "clients": text_clients, "body_bytes": len(body), "seconds": seconds,
            "answered_200": statuses.count(200), "refused_429": statuses.count(429),
            "unavailable_503": statuses.count(503),
            "other": len(statuses) - sum(statuses.count(s) for s in (200, 429, 503)),
            "peak_growth_mib": grown / 2**20,
            "stated_in_flight_bound_mib": stated_bound(log, "in_flight_memory_bound_bytes") / 2**20,
            "stated_text_bound_mib": stated_bound(log, "text_memory_bound_bytes") / 2**20,
            "workers": stated_bound(log, "workers"),
        }
        print("text flood:", json.dumps(results["text_flood"]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    out = REPO / "target/bench/serve-hostile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
