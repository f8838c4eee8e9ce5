"""``trackyard`` run the way operators run ``livekit-server``: LiveKit's own sample config and
Helm values start a server, the named flags and env variables work, the subcommands answer.

Real processes (and a real Redis for the distributed start). Tests that listen on every
interface run only inside the test network namespace (``scripts/netns``, as ``make test`` does).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from livekit import api

from tests.support.ports import free_port
from tests.support.redisserver import RedisServer
from tests.support.trackyard import TRACKYARD

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "livekit"
IN_NETNS = os.environ.get("TRACKYARD_NETNS") == "1"
netns_only = pytest.mark.skipif(not IN_NETNS, reason="listens on every interface: netns only")
SECRET = "s" * 40


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "REDIS_"))}
    env.pop("NODE_IP", None)
    env.pop("UDP_PORT", None)
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _ready(host: str, port: int) -> bool:
    try:
        return httpx.get(f"http://{host}:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _refused(host: str, port: int) -> bool:
    try:
        httpx.get(f"http://{host}:{port}/readyz", timeout=1)
    except httpx.ConnectError:
        return True
    return False


@contextmanager
def trackyard(
    args: list[str], env: dict[str, str], ready: tuple[str, int], tmp: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp / f"trackyard-{ready[1]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([TRACKYARD, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not _ready(*ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"not ready (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.05)
        yield proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRACKYARD, *args], capture_output=True, text=True, timeout=60, env=env or _env()
    )


async def test_livekit_sample_config_starts_a_distributed_server(tmp_path: Path) -> None:
    """LiveKit's config-sample.yaml as shipped, Redis from --redis-host, port from env,
    two --bind addresses; its short sample secrets are reported, not refused (as LiveKit)."""
    port = free_port()
    with RedisServer() as redis_server:
        args = [
            "--config",
            str(FIXTURES / "config-sample.yaml"),
            "--redis-host",
            redis_server.address,
            "--bind",
            "127.0.0.1",
            "--bind",
            "127.0.0.2",
        ]
        env = _env(LIVEKIT_PORT=str(port))
        with trackyard(args, env, ("127.0.0.1", port), tmp_path) as (_proc, log):
            assert _ready("127.0.0.2", port)  # every --bind address is served
            assert _refused("127.0.0.3", port)  # and only those
            text = log.read_text()
            assert re.search(
                r"not supported by trackyard.*rtc\.tcp_port, rtc\.use_external_ip", text
            )
            assert "secret is too short" in text and "key1" in text
            async with api.LiveKitAPI(f"http://127.0.0.1:{port}", "key1", "secret1") as lk:
                room = await lk.room.create_room(api.CreateRoomRequest(name="from-sample"))
                assert room.name == "from-sample"
            listed = _run(
                ["--config", str(FIXTURES / "config-sample.yaml"), "list-nodes"],
                _env(REDIS_HOST=redis_server.address),
            )
            assert listed.returncode == 0, listed.stderr
            assert re.search(r"ND_\w+\s+\S+\s+SERVING", listed.stdout), listed.stdout


@netns_only
def test_helm_values_start_on_every_interface(tmp_path: Path) -> None:
    """The Helm chart's livekit: section as --config-body (what the chart puts in
    LIVEKIT_CONFIG); no bind_addresses outside dev mode: every interface."""
    section = yaml.safe_load((FIXTURES / "helm-values.yaml").read_text())["livekit"]
    port = free_port()
    section["port"] = port
    args = ["--config-body", yaml.safe_dump(section), "--keys", f"helmkey: {SECRET}"]
    with trackyard(args, _env(), ("127.0.0.1", port), tmp_path) as (_proc, log):
        assert _ready("127.0.0.3", port)
        assert _ready("10.213.0.1", port)
        text = log.read_text()
        assert re.search(
            r"not supported by trackyard \(ignored\): rtc\.tcp_port, rtc\.use_ex", text
        )
        assert "turn" not in text.split("not supported")[1].splitlines()[0]  # enabled: false
        assert "secret is too short" not in text


@netns_only
def test_dev_without_keys_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    with trackyard(["--dev", "--port", str(port)], _env(), ("127.0.0.1", port), tmp_path):
        assert _refused("10.213.0.1", port)
        token = _run(["--dev", "create-join-token", "--room", "r", "--identity", "i"]).stdout
        assert token.startswith("Token: ")


def test_strict_unknown_and_wrong_type_stop_with_the_key_named() -> None:
    sample = str(FIXTURES / "config-sample.yaml")
    strict = _run(["--config", sample, "--strict", "ports"])
    assert strict.returncode == 2
    assert "rtc.tcp_port, rtc.use_external_ip" in strict.stderr
    unknown = _run(["--config-body", "development: true\nrtc: {udp_prot: 1}", "ports"])
    assert unknown.returncode == 2 and "rtc.udp_prot: unknown config key" in unknown.stderr
    lenient = _run(
        [
            "--config-body",
            "development: true\nrtc: {udp_prot: 1}",
            "--disable-strict-config",
            "ports",
        ]
    )
    assert (
        lenient.returncode == 0 and "unknown config keys (ignored): rtc.udp_prot" in lenient.stderr
    )
    wrong = _run(["--dev", "--rtc.port_range_start", "many", "ports"])
    assert wrong.returncode == 2 and "rtc.port_range_start" in wrong.stderr


def test_named_flags_and_env_variables_reach_the_config() -> None:
    out = _run(
        ["--dev", "--udp-port", "7882-7892", "--prometheus.port", "6789", "ports"],
        _env(LIVEKIT_PORT="7999"),
    )
    assert out.returncode == 0, out.stderr
    assert "7999 - HTTP service" in out.stdout
    assert "7882-7892 - ICE/UDP range" in out.stdout
    assert "6789 - Prometheus metrics" in out.stdout
    from_env = _run(["--dev", "ports"], _env(UDP_PORT="9000-9010"))
    assert "9000-9010 - ICE/UDP range" in from_env.stdout


def test_generate_keys_and_join_token() -> None:
    out = _run(["generate-keys"])
    key = re.search(r"API Key:\s+(API\w+)", out.stdout)
    secret = re.search(r"API Secret:\s+(\S+)", out.stdout)
    assert key and secret and len(secret.group(1)) >= 32
    made = _run(
        [
            *("--keys", f"{key.group(1)}: {secret.group(1)}", "create-join-token"),
            *("--room", "lobby", "--identity", "ada", "--recorder"),
        ]
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.removeprefix("Token: ").strip()
    claims = api.TokenVerifier(key.group(1), secret.group(1)).verify(token)
    assert claims.identity == "ada"
    assert claims.video.room == "lobby" and claims.video.room_join
    assert claims.video.hidden and claims.video.recorder and not claims.video.can_publish


def test_bind_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _run(["--dev", "--bind", "127.0.0.1", "--port", str(port)])
    assert out.returncode != 0
    assert "in use" in out.stderr.lower()
