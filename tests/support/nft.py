"""nftables rules inside the test network namespace (loss, firewalls, cut sockets).

Tests run in a namespace of their own (scripts/netns), so a table added here touches nothing
outside the test run; each table is deleted when its context ends.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def input_rules(table: str, *rules: str) -> Iterator[list[str]]:
    """A table ``table`` whose input-hook chain holds ``rules`` (nft rule syntax, e.g.
    ``"udp dport 5000 drop"``). Yields a list filled on exit with the rules that carry a
    ``counter`` (their packet counts), for tests that check a rule really matched."""
    nft = shutil.which("nft")
    if nft is None:
        pytest.fail("nft is not installed: run scripts/bootstrap --test (installs nftables)")
    script = (
        f"add table inet {table}\n"
        f"add chain inet {table} input {{ type filter hook input priority 0; }}\n"
        + "".join(f"add rule inet {table} input {rule}\n" for rule in rules)
    )
    subprocess.run([nft, "-f", "-"], input=script.encode(), check=True)
    counters: list[str] = []
    try:
        yield counters
    finally:
        out = subprocess.run(
            [nft, "list", "table", "inet", table], capture_output=True, text=True, check=True
        )
        counters.extend(line.strip() for line in out.stdout.splitlines() if "counter" in line)
        subprocess.run([nft, "delete", "table", "inet", table], check=True)
