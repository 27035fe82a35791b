#!/usr/bin/env python3
"""Run or check the fixture generators listed in tests/fixtures/generators.toml.

    python3 tools/fixtures.py run [SCRIPT ...]   run every generator (or those named, by path or
                                                 file name) in the manifest's order
    python3 tools/fixtures.py check              fail unless the manifest lists every generator
                                                 script, and every listed script and output exists
    python3 tools/fixtures.py list               print each generator and its outputs

`make fixtures` is `run` (after make setup and make setup-fixtures); `make lint` runs `check`.
A generator script is any Python file under tests/fixtures/, shared/*/fixtures/ or fuzz/.
Standard library only: `check` runs without any venv.
"""

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "tests" / "fixtures" / "generators.toml"
# Where generator scripts live; each Python file found here must be in the manifest.
SCRIPT_GLOBS = ("tests/fixtures/**/*.py", "shared/*/fixtures/**/*.py", "fuzz/*.py")
VENVS = (".venv", ".venv-fixtures")


def load():
    """The manifest's generators, in order, each checked for the keys it needs."""
    with open(MANIFEST, "rb") as f:
        generators = tomllib.load(f).get("generator", [])
    for g in generators:
        missing = {"script", "venv", "outputs"} - g.keys()
        if missing:
            sys.exit(f"{MANIFEST.relative_to(REPO)}: {g.get('script', g)} lacks {sorted(missing)}")
        if g["venv"] not in VENVS:
            sys.exit(f"{MANIFEST.relative_to(REPO)}: {g['script']}: venv {g['venv']!r} is not "
                     f"one of {VENVS}")
    return generators


def scripts_on_disk():
    """Every generator script in the repository, relative to its root."""
    found = set()
    for pattern in SCRIPT_GLOBS:
        for path in REPO.glob(pattern):
            if "__pycache__" not in path.parts:
                found.add(path.relative_to(REPO).as_posix())
    return found


def check(generators):
    """Problems with the manifest, one line each (empty when it is complete)."""
    problems = []
    listed = [g["script"] for g in generators]
    for script in sorted({s for s in listed if listed.count(s) > 1}):
        problems.append(f"{script}: listed more than once")
    for script in sorted(scripts_on_disk() - set(listed)):
        problems.append(f"{script}: a generator script that the manifest does not list")
    for g in generators:
        if not (REPO / g["script"]).is_file():
            problems.append(f"{g['script']}: listed, but there is no such file")
        if not g["outputs"]:
            problems.append(f"{g['script']}: no outputs listed")
        for pattern in g["outputs"]:
            if not any(REPO.glob(pattern)):
                problems.append(f"{g['script']}: output {pattern} matches no file")
    return problems


def run(generators, names):
    """Run the generators (all, or those named) from the repository root, in manifest order."""
    chosen = [g for g in generators
              if not names or g["script"] in names or Path(g["script"]).name in names]
    unknown = set(names) - {g["script"] for g in chosen} - {Path(g["script"]).name for g in chosen}
    if unknown:
        sys.exit(f"fixtures: not in the manifest: {', '.join(sorted(unknown))}")
    for g in chosen:
        python = REPO / g["venv"] / "bin" / "python"
        if not python.exists():
            setup = "make setup" if g["venv"] == ".venv" else "make setup-fixtures"
            sys.exit(f"fixtures: {python.relative_to(REPO)} is missing: run {setup} first")
        cmd = [str(python), g["script"], *g.get("args", [])]
        print(f"== {' '.join([g['venv'] + '/bin/python', *cmd[1:]])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="run the generators")
    run_parser.add_argument("scripts", nargs="*", help="only these (path or file name)")
    sub.add_parser("check", help="check the manifest against the repository")
    sub.add_parser("list", help="print the generators and their outputs")
    args = parser.parse_args(argv)
    generators = load()
    if args.action == "check":
        problems = check(generators)
        for line in problems:
            print(f"fixtures: {line}", file=sys.stderr)
        if problems:
            return 1
        print(f"fixtures: {len(generators)} generators, all listed with their outputs",
              file=sys.stderr)
    elif args.action == "list":
        for g in generators:
            print(f"{g['script']} ({g['venv']})")
            for pattern in g["outputs"]:
                print(f"    {pattern}")
    else:
        try:
            run(generators, args.scripts)
        except subprocess.CalledProcessError as err:
            print(f"fixtures: exit status {err.returncode} from {' '.join(err.cmd)}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
