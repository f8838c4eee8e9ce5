"""Shared fixtures. SDK tests need the network namespace made by ``scripts/netns``."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest


def _in_test_netns() -> bool:
    if os.environ.get("TRACKYARD_NETNS") != "1":
        return False
    out = subprocess.run(["ip", "-4", "addr", "show", "ty0"], capture_output=True, text=True)
    return "10.213.0.1" in out.stdout


@pytest.fixture(scope="session")
def netns() -> None:
    """Fail (not skip) outside the test namespace: the SDK needs a non-loopback interface."""
    if not _in_test_netns():
        pytest.fail(
            "this test drives the real LiveKit SDK and must run inside the test network "
            "namespace: run `make test` (or scripts/netns .venv/bin/pytest ...)"
        )
    assert socket.gethostbyname("localhost") == "127.0.0.1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("sdk"):
            item.fixturenames.insert(0, "netns")  # type: ignore[attr-defined]
