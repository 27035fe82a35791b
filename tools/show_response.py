#!/usr/bin/env python3
"""Prints a function's response JSON (read from stdin) for people: long vectors are shortened.

Used by `make demo`. HTTP responses (statusCode/body) are shown with their decoded body. The
full, unshortened JSON is what `make -s invoke` prints.
"""

import json
import sys

SHOWN = 4  # leading vector components to show


def shorten(value):
    """Replaces every list of more than SHOWN numbers by its head and its length, writes short
    lists of numbers (landmark points) on one line, and rounds floats for reading."""
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(x, (int, float)) for x in value):
            head = ", ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in value[:SHOWN])
            if len(value) > SHOWN:
                return f"[{head}, ... {len(value)} values]"
            return f"[{head}]"
        return [shorten(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


def similarities(response):
    """Cosine similarity of each pair of embeddings in an embeddings or faces response."""
    if not isinstance(response, dict):
        return []
    # Embeddings answer {"data": [{"embedding"}]}; faces answer {"faces": [{"embedding"}]}.
    label = "input" if "data" in response else "face"
    items = response.get("data") or response.get("faces") or []
    vectors = [d.get("embedding") for d in items if isinstance(d, dict)]
    if len(vectors) < 2 or not all(isinstance(v, list) for v in vectors):
        return []

    def cosine(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
        return dot / norm if norm else 0.0

    return [
        f"cosine({label} {i}, {label} {j}) = {cosine(vectors[i], vectors[j]):.3f}"
        for i in range(len(vectors))
        for j in range(i + 1, len(vectors))
    ]


def main() -> int:
    text = sys.stdin.read()
    try:
        response = json.loads(text)
    except json.JSONDecodeError:
        print(text, end="")
        return 1
    if isinstance(response, dict) and "statusCode" in response and isinstance(response.get("body"), str):
        print(f"HTTP {response['statusCode']}")
        try:
            response = json.loads(response["body"])
        except json.JSONDecodeError:
            print(response["body"])
            return 0
    print(json.dumps(shorten(response), indent=2, ensure_ascii=False))
    for line in similarities(response):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
