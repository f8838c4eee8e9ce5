"""``rtc.turn_servers`` as LiveKit reads it, and the ICE servers handed to clients
(``trackyard.core.turn``): URLs, TURN REST credentials (coturn's ``use-auth-secret``), TTLs,
secret files. The e2e check that coturn accepts them is ``tests/e2e/test_turn.py``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
import yaml

from trackyard.core import turn
from trackyard.core.config import LIVEKIT_UNSUPPORTED, Config, ConfigError

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "livekit"


def _cfg(text: str) -> Config:
    return Config.from_yaml(text)


def test_livekit_sample_turn_servers_are_supported() -> None:
    data = yaml.safe_load((SAMPLE / "config-sample-uncommented.yaml").read_text())
    data["rtc"]["node_ip"] = "203.0.113.7"
    cfg = Config.from_mapping(data)
    assert "rtc.turn_servers" not in LIVEKIT_UNSUPPORTED
    assert not any(k.startswith("rtc.turn_servers") for k in cfg.unsupported_keys)
    (server,) = cfg.rtc.turn_servers
    assert (server.host, server.port, server.protocol) == ("myhost.com", 443, "tls")
    assert server.secret_file == "/var/lib/coturn/secret" and server.ttl == 14400


def test_shape_and_validation() -> None:
    cfg = _cfg(
        "rtc:\n  turn_servers:\n"
        "    - {host: turn.example.com, port: 3478, protocol: UDP, secret: s}\n"
        "    - {host: turn.example.com, port: 3478, username: u, credential: c}\n"
        "    - {host: 'fd00::1', port: 5349, protocol: tls, secret: s, ttl: 999999}\n"
    )
    udp, tcp, tls = cfg.rtc.turn_servers
    assert udp.protocol == "udp" and tcp.protocol == "tcp"  # LiveKit's default is tcp
    assert tls.ttl == 86400  # capped at 24 h
    assert turn.turn_url(udp) == "turn:turn.example.com:3478?transport=udp"
    assert turn.turn_url(tcp) == "turn:turn.example.com:3478?transport=tcp"
    assert turn.turn_url(tls) == "turns:[fd00::1]:5349?transport=tcp"
    with pytest.raises(ConfigError, match=r"rtc\.turn_servers\.0\.protocol"):
        _cfg("rtc: {turn_servers: [{host: h, port: 3478, protocol: dtls, secret: s}]}")
    with pytest.raises(ConfigError, match=r"rtc\.turn_servers\.0\.port"):
        _cfg("rtc: {turn_servers: [{host: h, secret: s}]}")
    with pytest.raises(ConfigError, match=r"rtc\.turn_servers\.0\.secert"):
        _cfg("rtc: {turn_servers: [{host: h, port: 1, secert: s}]}")


@pytest.mark.parametrize(("ttl", "valid"), [(0, 14400), (-5, 300), (600, 600), (10**9, 86400)])
def test_credential_ttl_as_livekit(ttl: int, valid: int) -> None:
    cfg = _cfg(f"rtc: {{turn_servers: [{{host: h, port: 3478, secret: s, ttl: {ttl}}}]}}")
    (server,) = cfg.rtc.turn_servers
    assert server.credential_ttl == valid
    username, _ = turn.turn_credentials(server, "PA_x", now=1000)
    assert username == f"{1000 + valid}:PA_x"


def test_turn_rest_credentials() -> None:
    cfg = _cfg(
        "rtc:\n  stun_servers: ['stun.example.com:3478']\n  turn_servers:\n"
        "    - {host: h, port: 3478, protocol: udp, secret: topsecret}\n"
        "    - {host: h, port: 443, protocol: tls, username: u, credential: c}\n"
    )
    servers = turn.ice_servers(cfg.rtc, "PA_abc", now=1_700_000_000)
    assert [list(s.urls) for s in servers] == [
        ["turn:h:3478?transport=udp"],
        ["turns:h:443?transport=tcp"],
        ["stun:stun.example.com:3478"],
    ]
    rest, static, stun = servers
    assert rest.username == "1700014400:PA_abc"
    expected = hmac.new(b"topsecret", b"1700014400:PA_abc", hashlib.sha1).digest()
    assert base64.b64decode(rest.credential) == expected
    assert (static.username, static.credential) == ("u", "c")
    assert not stun.username and not stun.credential
    # no servers configured: none handed out (no public STUN default, unlike LiveKit)
    assert turn.ice_servers(Config().rtc, "PA_abc") == []


def _load(tmp_path: Path, server: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(f"keys: {{k: {'x' * 32}}}\nrtc: {{turn_servers: [{server}]}}\n")
    return Config.load(path, env={})


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  fromfile\n")
    secret.chmod(0o600)
    cfg = _load(tmp_path, f"{{host: h, port: 3478, secret_file: {secret}}}")
    assert cfg.rtc.turn_servers[0].secret == "fromfile"
    # an inline secret wins; a blank one falls back to the file
    cfg = _load(tmp_path, f"{{host: h, port: 3478, secret: ' inline ', secret_file: {secret}}}")
    assert cfg.rtc.turn_servers[0].secret == "inline"
    cfg = _load(tmp_path, f"{{host: h, port: 3478, secret: '  ', secret_file: {secret}}}")
    assert cfg.rtc.turn_servers[0].secret == "fromfile"
    secret.chmod(0o604)
    with pytest.raises(ConfigError, match="must not be accessible by others"):
        _load(tmp_path, f"{{host: h, port: 3478, secret_file: {secret}}}")
    secret.write_text(" \n\t")
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        _load(tmp_path, f"{{host: h, port: 3478, secret_file: {secret}}}")
    with pytest.raises(ConfigError, match="cannot read"):
        _load(tmp_path, f"{{host: h, port: 3478, secret_file: {tmp_path / 'missing'}}}")


def test_credentials_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no usable credentials"):
        _load(tmp_path, "{host: h, port: 3478}")
    with pytest.raises(ConfigError, match="no usable credentials"):
        _load(tmp_path, "{host: h, port: 3478, username: u}")
    cfg = _load(tmp_path, "{host: h, port: 3478, username: u, credential: c}")
    assert cfg.rtc.turn_servers[0].username == "u"
