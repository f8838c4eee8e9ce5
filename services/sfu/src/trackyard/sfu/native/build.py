"""Build the media plane's C library from source: ``python -m trackyard.sfu.native.build``.

Plain ``cc`` into a shared library loaded with cffi's ABI mode, so the build needs a C
compiler only (no Python headers, no setuptools). scripts/bootstrap runs it; without a
compiler the server runs on the pure-Python reference path and says so at start-up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
LIBRARY = HERE / "libtyfanout.so"
SOURCES = [HERE / "fanout.c"]
HEADERS = [HERE / "fanout.h"]


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def stale(library: Path = LIBRARY, inputs: list[Path] = SOURCES + HEADERS) -> bool:
    if not library.exists():
        return True
    built = library.stat().st_mtime
    return any(p.stat().st_mtime > built for p in inputs)


def build(
    *,
    force: bool = False,
    library: Path = LIBRARY,
    sources: list[Path] = SOURCES,
    headers: list[Path] = HEADERS,
    libs: tuple[str, ...] = (),
) -> Path:
    """Compile ``sources`` into ``library`` unless it is newer than them (``force``: anyway).
    Other native libraries of the project (``trackyard.loadtest.rtpcount``) build here too."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc) found: install gcc, or run on the Python path")
    if not force and not stale(library, sources + headers):
        return library
    tmp = library.with_suffix(f".so.{os.getpid()}.tmp")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    cmd += [str(s) for s in sources] + ["-o", str(tmp), *libs]
    subprocess.run(cmd, check=True)
    tmp.replace(library)  # atomic: a running process never loads a half-written library
    return library


def main() -> int:
    try:
        path = build(force="--force" in sys.argv)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"trackyard.sfu.native: not built ({exc}); the Python path will be used")
        return 0 if "--optional" in sys.argv else 1
    print(f"trackyard.sfu.native: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
