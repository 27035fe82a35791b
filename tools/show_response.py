#!/usr/bin/env python3
"""Prints a function's response JSON (read from stdin) for people: long vectors are shortened.

Used by `make demo`. HTTP responses (statusCode/body) are shown with their decoded body. The
full, unshortened JSON is what `make -s invoke` prints.
"""

import json
import sys

SHOWN = 4  # leading vector components to show


def shorten(value):
    """Replaces every list of more than SHOWN numbers by its head and its length."""
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > SHOWN and all(isinstance(x, (int, float)) for x in value):
            head = ", ".join(f"{x:.4f}" for x in value[:SHOWN])
            return f"[{head}, ... {len(value)} values]"
        return [shorten(v) for v in value]
    return value


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
