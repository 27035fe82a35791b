#!/usr/bin/env python3
"""Regenerate the hash-locked requirements files from their .in files.

    python3 tools/lock_python.py [--upgrade]             every lock (below)
    python3 tools/lock_python.py --in X.in --out X.txt   one lock

The four locks: requirements.in -> requirements.txt (what `make setup` installs
into .venv: the tests, demo, benchmarks and fixture scripts),
requirements-infra.in -> requirements-infra.txt (the template linters, which
`make check-infra` installs into .venv-infra) and requirements-fixtures.in ->
requirements-fixtures.txt (torch, transformers and optimum's exporter for the
captioning fixtures and real-size benchmark, which `make fixtures-captioning`
installs into .venv-fixtures), and requirements-deploy.in -> requirements-deploy.txt
(the SAM CLI and cargo-lambda, which `make deploy` and `make package` install into
.venv-deploy). Each is resolved on its own, for
a venv of its own, so neither constrains the other.

How: install the .in file into a throwaway venv (so pip's own resolver
picks every transitive version), `pip freeze` it, then `pip download --no-deps`
each frozen pin and hash the downloaded file. Versions already pinned in the
output file are kept (given to pip as constraints), except for projects the
.in file names itself, so editing one line of an .in file moves only what that
line forces; --upgrade drops them and re-resolves everything to the newest. `pip download` without binary
flags selects the same file `pip install` would on this interpreter (best
compatible wheel, else the sdist), so the recorded sha256 is exactly the file
`pip install --require-hashes -r requirements.txt` will fetch here.

The lock is for CPython 3.11 on manylinux x86_64 (what developers and CI run),
so the script refuses to run on anything else rather than write a lock for the
wrong wheels. Standard library only.
"""

import argparse
import hashlib
import platform
import re
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_PYTHON = (3, 11)
PIP_FLAGS = ["--disable-pip-version-check", "--no-input"]
SDIST_SUFFIXES = (".tar.gz", ".zip")
# (input, output) of every lock the project keeps.
LOCKS = (
    (REPO / "requirements.in", REPO / "requirements.txt"),
    (REPO / "requirements-infra.in", REPO / "requirements-infra.txt"),
    (REPO / "requirements-fixtures.in", REPO / "requirements-fixtures.txt"),
    (REPO / "requirements-deploy.in", REPO / "requirements-deploy.txt"),
)
# The project name at the start of a requirement or pin line.
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def check_platform():
    """Fail unless this interpreter matches the platform the lock is for."""
    here = (sys.implementation.name, sys.version_info[:2], sys.platform, platform.machine())
    wanted = ("cpython", TARGET_PYTHON, "linux", "x86_64")
    if here != wanted:
        sys.exit(f"lock_python: must run on {wanted}, this is {here}")


def canonical(name):
    """PEP 503 normalised project name, to match freeze names to file names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(python, *args):
    """Run pip of `python`, failing loudly (pip's own output stays visible)."""
    subprocess.run([str(python), "-m", "pip", *PIP_FLAGS, *args], check=True)


def names_in(path):
    """Canonical names of the projects that an .in file lists."""
    names = set()
    for line in path.read_text().splitlines():
        match = NAME.match(line.split("#", 1)[0])
        if match:
            names.add(canonical(match.group(1)))
    return names


def kept_pins(requirements_in, lock):
    """`name==version` lines from an existing lock, less the projects the .in file names."""
    if not lock.is_file():
        return []
    direct = names_in(requirements_in)
    kept = []
    for line in lock.read_text().splitlines():
        pin = line.split("#", 1)[0].split()
        if pin and "==" in pin[0]:
            name = pin[0].split("==", 1)[0]
            if canonical(name) not in direct:
                kept.append(pin[0])
    return kept


def resolve(requirements_in, workdir, constraints):
    """Install requirements_in into a fresh venv; return its python and `pip freeze` pins."""
    venv_dir = workdir / "venv"
    venv.create(venv_dir, with_pip=True)
    python = venv_dir / "bin" / "python"
    constraints_file = workdir / "constraints.txt"
    constraints_file.write_text("".join(f"{pin}\n" for pin in constraints))
    pip(python, "install", "-r", str(requirements_in), "-c", str(constraints_file))
    frozen = subprocess.run(
        [str(python), "-m", "pip", *PIP_FLAGS, "freeze"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    pins = {}
    for line in frozen:
        name, sep, version = line.partition("==")
        if not sep:
            # An editable or direct-URL install cannot be hash-locked by version.
            sys.exit(f"lock_python: unpinnable freeze line {line!r}")
        pins[canonical(name)] = (name, version)
    return python, pins


def dist_of(filename):
    """(canonical name, version) encoded in a wheel or sdist file name."""
    if filename.endswith(".whl"):
        name, version = filename.split("-")[:2]
    elif filename.endswith(SDIST_SUFFIXES):
        stem = filename.removesuffix(".tar.gz").removesuffix(".zip")
        name, version = stem.rsplit("-", 1)
    else:
        sys.exit(f"lock_python: unexpected download {filename}")
    return canonical(name), version


def sha256_of(path):
    """Hex sha256 of a file, read in chunks (wheels can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_pins(python, pins, workdir):
    """Download each pinned file pip would install here; return {canonical name: sha256}."""
    pinned = workdir / "pinned.txt"
    pinned.write_text("".join(f"{name}=={version}\n" for name, version in pins.values()))
    dest = workdir / "downloads"
    pip(python, "download", "--no-deps", "--dest", str(dest), "-r", str(pinned))
    hashes = {}
    for path in sorted(dest.iterdir()):
        key, version = dist_of(path.name)
        if key not in pins or pins[key][1] != version or key in hashes:
            sys.exit(f"lock_python: download {path.name} matches no single pin")
        hashes[key] = sha256_of(path)
    missing = sorted(set(pins) - set(hashes))
    if missing:
        sys.exit(f"lock_python: nothing downloaded for {missing}")
    return hashes


def render(pins, hashes, requirements_in, out):
    """The lock file's text: a header, then one hash-pinned line per dist."""
    header = [
        f"# Generated by tools/lock_python.py from {requirements_in.name}; do not edit.",
        f"# Locked for CPython {TARGET_PYTHON[0]}.{TARGET_PYTHON[1]} on manylinux x86_64.",
        f"# Install with: pip install --require-hashes -r {out.name}",
    ]
    lines = [
        f"{name}=={version} --hash=sha256:{hashes[key]}"
        for key, (name, version) in sorted(pins.items())
    ]
    return "\n".join(header + lines) + "\n"


def lock(src, out, upgrade):
    """Resolve one .in file and write its hash-locked output."""
    constraints = [] if upgrade else kept_pins(src, out)
    with tempfile.TemporaryDirectory(prefix="coldpath-lock-") as tmp:
        workdir = Path(tmp)
        python, pins = resolve(src.resolve(), workdir, constraints)
        hashes = hash_pins(python, pins, workdir)
    out.write_text(render(pins, hashes, src, out))
    print(f"lock_python: wrote {len(pins)} pins to {out}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="src", type=Path, help="one .in file (default: every lock)")
    parser.add_argument("--out", type=Path, help="its output (with --in)")
    parser.add_argument("--upgrade", action="store_true",
                        help="re-resolve everything instead of keeping the versions already pinned")
    args = parser.parse_args()
    if (args.src is None) != (args.out is None):
        parser.error("--in and --out go together")
    check_platform()
    for src, out in [(args.src, args.out)] if args.src else LOCKS:
        lock(src, out, args.upgrade)


if __name__ == "__main__":
    main()
