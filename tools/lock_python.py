#!/usr/bin/env python3
"""Regenerate the hash-locked requirements files from their .in files.

    python3 tools/lock_python.py [--upgrade]             every lock (below)
    python3 tools/lock_python.py --in X.in --out X.txt   one lock

The four locks, all in tools/setup/: requirements.in -> requirements.txt (what `make setup` installs
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
import json
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
# (input, output) of every lock the project keeps, all in tools/setup/ beside bootstrap.py.
SETUP = REPO / "tools" / "setup"
LOCKS = (
    (SETUP / "requirements.in", SETUP / "requirements.txt"),
    (SETUP / "requirements-infra.in", SETUP / "requirements-infra.txt"),
    (SETUP / "requirements-fixtures.in", SETUP / "requirements-fixtures.txt"),
    (SETUP / "requirements-deploy.in", SETUP / "requirements-deploy.txt"),
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


# Run by the throwaway venv's python: which extras of each installed project are requested,
# by the .in file or by another installed project's requirements (their markers evaluated for
# the extras that project itself was asked for), to a fixed point. Uses pip's own vendored
# `packaging`, so the lock stays standard-library only.
EXTRAS_SCRIPT = r"""
import importlib.metadata as md, json, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name as canon
dists = {canon(d.metadata["Name"]): d for d in md.distributions()}
extras = {name: set() for name in dists}
for line in open(sys.argv[1]).read().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        r = Requirement(line)
        extras.setdefault(canon(r.name), set()).update(r.extras)
changed = True
while changed:
    changed = False
    for name, dist in dists.items():
        for text in dist.requires or []:
            r = Requirement(text)
            wanted = extras[name] or {""}
            if r.marker is not None and not any(r.marker.evaluate({"extra": e}) for e in wanted):
                continue
            target = canon(r.name)
            if target in extras and not set(r.extras) <= extras[target]:
                extras[target] |= set(r.extras)
                changed = True
print(json.dumps({name: sorted(e) for name, e in extras.items() if e}))
"""


def requested_extras(python, requirements_in):
    """{canonical name: [extra, ...]} requested anywhere in the installed graph."""
    out = subprocess.run(
        [str(python), "-c", EXTRAS_SCRIPT, str(requirements_in)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def kept_pins(requirements_in, lock):
    """`name==version` lines from an existing lock, less the projects the .in file names."""
    if not lock.is_file():
        return []
    direct = names_in(requirements_in)
    kept = []
    for line in lock.read_text().splitlines():
        pin = line.split("#", 1)[0].split()
        if pin and "==" in pin[0]:
            name, version = pin[0].split("==", 1)
            # A constraint cannot carry extras; the pin line's `name[extras]` keeps only name.
            name = name.split("[", 1)[0]
            if canonical(name) not in direct:
                kept.append(f"{name}=={version}")
    return kept


def resolve(requirements_in, workdir, constraints):
    """Install requirements_in into a fresh venv; return its python and `pip freeze` pins."""
    venv_dir = workdir / "venv"
    venv.create(venv_dir, with_pip=True)
    python = venv_dir / "bin" / "python"
    constraints_file = workdir / "constraints.txt"
    constraints_file.write_text("".join(f"{pin}\n" for pin in constraints))
    pip(python, "install", "-r", str(requirements_in), "-c", str(constraints_file))
    # `--all`: plain `pip freeze` leaves out pip, setuptools and wheel, so a package that
    # requires wheel at run time (aws_lambda_builders does) would fail a --require-hashes
    # install. Those three are kept only when the .in file names them itself.
    frozen = subprocess.run(
        [str(python), "-m", "pip", *PIP_FLAGS, "freeze", "--all"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    named = names_in(requirements_in)
    pins = {}
    for line in frozen:
        name, sep, version = line.partition("==")
        if not sep:
            # An editable or direct-URL install cannot be hash-locked by version.
            sys.exit(f"lock_python: unpinnable freeze line {line!r}")
        if canonical(name) in {"pip", "setuptools", "wheel"} and canonical(name) not in named:
            continue
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


def render(pins, hashes, extras, requirements_in, out):
    """The lock file's text: a header, then one hash-pinned line per dist."""
    header = [
        f"# Generated by tools/lock_python.py from {requirements_in.name}; do not edit.",
        f"# Locked for CPython {TARGET_PYTHON[0]}.{TARGET_PYTHON[1]} on manylinux x86_64.",
        f"# Install with: pip install --require-hashes -r {out.name}",
    ]
    # A pin carries the extras requested of it anywhere in the graph: with --require-hashes,
    # pip treats a dependency's `name[extras]` requirement as unpinned unless the pin line
    # names those extras too.
    # The plain line stays too: a plain `name` requirement is not satisfied by `name[extras]`.
    lines = []
    for key, (name, version) in sorted(pins.items()):
        lines.append(f"{name}=={version} --hash=sha256:{hashes[key]}")
        if extras.get(key):
            wanted = ",".join(extras[key])
            lines.append(f"{name}[{wanted}]=={version} --hash=sha256:{hashes[key]}")
    return "\n".join(header + lines) + "\n"


def lock(src, out, upgrade):
    """Resolve one .in file and write its hash-locked output."""
    constraints = [] if upgrade else kept_pins(src, out)
    with tempfile.TemporaryDirectory(prefix="coldpath-lock-") as tmp:
        workdir = Path(tmp)
        python, pins = resolve(src.resolve(), workdir, constraints)
        extras = requested_extras(python, src.resolve())
        hashes = hash_pins(python, pins, workdir)
    out.write_text(render(pins, hashes, extras, src, out))
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
