"""Forwarding CPU of a base revision against the working tree, interleaved in one invocation.

Runs ``python -m benchmarks.forwarding`` (flags it had at the base revision only: ``--sizes``,
``--seconds``, ``--naive-sizes``) alternately for the base revision and for the working tree
(base, new, base, new, ...), so both see the same machine load over the same minutes, and
prints the server CPU microseconds per delivered packet of each and their ratio (new / base;
below 1 is faster). Writes ``benchmarks/results/compare_forwarding.json``.

The base revision is checked out with ``git worktree add --detach`` under /tmp. Each side runs
with ``PYTHONPATH`` set to its tree's ``src``, ``libs/*/src`` and ``services/*/src``, which come
before the editable install's paths in ``sys.path``: the base's ``trackyard`` packages shadow
the working tree's. Both sides run the *base's* benchmark script (``--harness own``: each its
own), so only the code under test differs, not the measuring. Before measuring, each side
prints where its ``trackyard.sfu`` and ``trackyard.core`` are imported from, and the run stops
unless each imports its own tree's code.

Run: ``.venv/bin/python -m benchmarks.compare [--base 5b3d80d] [--sizes 16,64]
[--seconds 8] [--rounds 2]`` (about a minute per run of the forwarding benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SOURCE_DIRS = ("src", "libs/*/src", "services/*/src")
WHERE = (
    "import trackyard.sfu.uptrack as u, trackyard.core.config as c; print(u.__file__); "
    "print(c.__file__)"
)


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def base_worktree(rev: str) -> Path:
    """A detached worktree of ``rev`` under /tmp (reused when it is already there)."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = Path("/tmp") / f"trackyard-base-{commit[:12]}"
    if not (path / ".git").exists():
        _git("worktree", "add", "--detach", str(path), commit)
    elif _git("rev-parse", "HEAD", cwd=path) != commit:
        raise SystemExit(f"{path} exists but is not at {commit}")
    return path


def source_path(tree: Path) -> str:
    dirs: list[str] = []
    for pattern in SOURCE_DIRS:
        dirs.extend(str(p) for p in sorted(tree.glob(pattern)) if p.is_dir())
    return os.pathsep.join(dirs)


def env_for(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = source_path(tree)
    return env


def imported_from(tree: Path, cwd: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", WHERE],
        cwd=cwd,
        env=env_for(tree),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def run_forwarding(tree: Path, cwd: Path, sizes: str, seconds: float) -> dict[str, Any]:
    """One run of ``benchmarks.forwarding`` from ``cwd``; returns its result JSON (the file
    it writes under ``cwd`` is put back as it was)."""
    out = cwd / "benchmarks" / "results" / "forwarding.json"
    previous = out.read_bytes() if out.exists() else None
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.forwarding",
        "--sizes",
        sizes,
        "--seconds",
        str(seconds),
        "--naive-sizes",
        "",
    ]
    try:
        subprocess.run(cmd, cwd=cwd, env=env_for(tree), check=True)
        result: dict[str, Any] = json.loads(out.read_text())
    finally:
        if previous is not None:
            out.write_bytes(previous)
        else:
            out.unlink(missing_ok=True)
    return result


def per_size(result: dict[str, Any]) -> dict[int, float]:
    return {
        int(r["n"]): float(r["us_per_delivered_packet"])
        for r in result["forwarding"]
        if "error" not in r and r.get("us_per_delivered_packet")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="5b3d80d", help="base revision (default 5b3d80d)")
    parser.add_argument("--sizes", default="16,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="base+new pairs (default 2)")
    parser.add_argument(
        "--harness",
        choices=("base", "own"),
        default="base",
        help="whose benchmarks/forwarding.py both sides run (default: the base's)",
    )
    parser.add_argument(
        "--remove-worktree", action="store_true", help="remove the base worktree at the end"
    )
    args = parser.parse_args()
    started = time.monotonic()

    base = base_worktree(args.base)
    base_commit = _git("rev-parse", "HEAD", cwd=base)
    new_commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    trees = {"base": base, "new": ROOT}
    harness = {side: base if args.harness == "base" else tree for side, tree in trees.items()}
    where = {side: imported_from(tree, harness[side]) for side, tree in trees.items()}
    for side, files in where.items():
        print(f"{side}: {harness[side]}/benchmarks/forwarding.py importing", flush=True)
        for f in files:
            print(f"    {f}", flush=True)
        if not all(f.startswith(str(trees[side]) + os.sep) for f in files):
            raise SystemExit(f"the {side} run would not import its own tree's code")

    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for side, tree in trees.items():
            print(f"--- round {round_ + 1}/{args.rounds}: {side}", flush=True)
            result = run_forwarding(tree, harness[side], args.sizes, args.seconds)
            runs.append({"side": side, "round": round_ + 1, "us": per_size(result), **result})

    sizes = sorted({n for r in runs for n in r["us"]})
    summary: dict[str, Any] = {}
    print("\nserver CPU us per delivered packet (mean of the runs; each run in brackets)")
    for n in sizes:
        values = {
            side: [r["us"][n] for r in runs if r["side"] == side and n in r["us"]]
            for side in ("base", "new")
        }
        if not values["base"] or not values["new"]:
            continue
        base_us = statistics.fmean(values["base"])
        new_us = statistics.fmean(values["new"])
        ratio = new_us / base_us
        summary[str(n)] = {
            "base_us": round(base_us, 2),
            "new_us": round(new_us, 2),
            "ratio_new_over_base": round(ratio, 3),
            "base_runs": values["base"],
            "new_runs": values["new"],
        }
        print(
            f"N={n:<3} base {base_us:6.2f} {values['base']}  new {new_us:6.2f} "
            f"{values['new']}  new/base {ratio:.3f}"
        )
    out = {
        "benchmark": "compare_forwarding",
        "base": {"rev": args.base, "commit": base_commit, "imports": where["base"]},
        "new": {"commit": new_commit, "uncommitted_changes": dirty, "imports": where["new"]},
        "harness": args.harness,
        "sizes": args.sizes,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "order": [f"{r['side']}{r['round']}" for r in runs],
        "summary": summary,
        "runs": [
            {k: v for k, v in r.items() if k in ("side", "round", "forwarding", "fit")}
            for r in runs
        ],
        "command": " ".join(["python -m benchmarks.compare", *sys.argv[1:]]),
        "run_s": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "compare_forwarding.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} ({out['run_s']} s)")
    if args.remove_worktree:
        _git("worktree", "remove", "--force", str(base))


if __name__ == "__main__":
    main()
