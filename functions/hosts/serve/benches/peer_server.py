#!/usr/bin/env python3
"""The peer for the load benchmark: an OpenAI-style embeddings server in Python on ONNX Runtime.

    .venv/bin/python functions/hosts/serve/benches/peer_server.py --port 8091 \
        --model M/model.onnx --tokenizer M/tokenizer.json --threads 2

What a user would write instead of coldpath-serve when no ready-made server fits: the standard
library's threading HTTP server (one thread per connection) in front of one ONNX Runtime
session, which runs concurrent requests in parallel (`InferenceSession.run` releases the GIL).
No dynamic batching: each request runs on its own. The pipeline (tokenise, run, mean-pool,
normalise) is the reference the parity fixtures and the embeddings benchmark use, imported from
functions/hosts/embeddings/benches/python_ref.py, with the same session options and thread count as
the Rust side. Answers `POST /v1/embeddings` ({"input": str | [str]}) and `GET /ready`.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "functions" / "hosts" / "embeddings" / "benches"))
from python_ref import embed, load_session, load_tokenizer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    tokenizer = load_tokenizer(args.tokenizer, args.max_tokens)
    session = load_session(args.model, args.threads)
    embed(tokenizer, session, ["warm up"])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects

        def log_message(self, *_):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200, {"status": "ready"}) if self.path == "/ready" else self.reply(404, {})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path != "/v1/embeddings":
                return self.reply(404, {})
            try:
                texts = json.loads(body)["input"]
                texts = [texts] if isinstance(texts, str) else texts
                if not texts or not all(isinstance(t, str) for t in texts):
                    raise ValueError("input must be a string or a list of strings")
            except (ValueError, KeyError, TypeError) as e:
                return self.reply(400, {"error": {"message": str(e), "type": "invalid_request_error"}})
            vectors, tokens = embed(tokenizer, session, texts)
            self.reply(200, {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                         for i, v in enumerate(vectors)],
                "model": "all-MiniLM-L6-v2",
                "usage": {"prompt_tokens": int(tokens.sum()), "total_tokens": int(tokens.sum())},
            })

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(json.dumps({"ready": True, "port": args.port}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
