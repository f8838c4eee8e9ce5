"""LiveKit operators' configs: every LiveKit key is known, supported ones act as in LiveKit,
unsupported ones warn (``strict``: refuse), durations, ``-1``, env vars, precedence.

Fixtures in ``tests/fixtures/livekit/`` are LiveKit's own files (source and commit in their
first line): ``config-sample.yaml``, the same with every commented-out key line uncommented,
and the Helm chart's ``values.yaml`` and ``server-sample.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trackyard.core.config import (
    ENV_PATHS,
    LIVEKIT_UNSUPPORTED,
    Config,
    ConfigError,
    parse_duration,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "livekit"


def _fixture(name: str) -> dict[str, Any]:
    data = yaml.safe_load((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


def test_livekit_sample_config_every_key_known() -> None:
    data = _fixture("config-sample-uncommented.yaml")
    data["rtc"]["node_ip"] = "203.0.113.7"  # the sample's placeholder is not an address
    cfg = Config.from_mapping(data)
    # supported keys took effect
    assert cfg.port == 7880
    assert cfg.redis.address == "redis.host:6379"
    assert cfg.redis.sentinel_master_name == "livekit"
    assert (cfg.rtc.port_range_start, cfg.rtc.port_range_end) == (50000, 60000)
    assert cfg.rtc.udp_port == (7882, 7892)
    assert cfg.rtc.node_ip == "203.0.113.7"
    assert cfg.prometheus.port == 6789  # prometheus_port, the older spelling
    assert cfg.webhook.urls == ["https://your-host.com/handler"]
    assert cfg.webhook.api_key == "<api_key>"
    assert cfg.limit.num_tracks == 0  # -1: no limit
    assert cfg.limit.bytes_per_sec == 1_000_000_000
    assert cfg.signal.max_message_size == 2097152  # limit.signal_message_size_limit
    assert cfg.room.enable_remote_unmute is True
    assert (cfg.audio.active_level, cfg.audio.update_interval) == (30, 500)
    assert cfg.node_selector.kind == "sysload" and cfg.node_selector.regions[0].name == "us-west-2"
    assert cfg.logging.json_format is False
    # unsupported keys named, one line
    unsupported = cfg.unsupported_keys
    for key in ("rtc.use_external_ip", "rtc.tcp_port", "turn.domain", "redis.tls.enabled"):
        assert key in unsupported
    (line,) = [w for w in cfg.warnings() if "not supported" in w]
    assert "rtc.pli_throttle.low_quality" in line
    # turn.enabled: false asks for nothing and is not reported
    assert "turn.enabled" not in unsupported
    with pytest.raises(ConfigError, match=r"--strict.*rtc\.tcp_port"):
        Config.from_mapping(data, strict=True)


def test_livekit_sample_config_as_shipped() -> None:
    cfg = Config.from_yaml((FIXTURES / "config-sample.yaml").read_text())
    assert cfg.keys == {"key1": "secret1", "key2": "secret2"}
    assert cfg.unsupported_keys == ["rtc.tcp_port", "rtc.use_external_ip"]


@pytest.mark.parametrize("name", ["helm-values.yaml", "helm-server-sample.yaml"])
def test_helm_values_livekit_section(name: str) -> None:
    section = _fixture(name)["livekit"]
    cfg = Config.from_mapping(section)
    assert cfg.logging.level == "info"  # log_level
    assert "rtc.use_external_ip" in cfg.unsupported_keys
    # helm-only keys inside turn (secretName, serviceType) are part of the known section
    if name == "helm-server-sample.yaml":
        assert "turn.secretName" in cfg.unsupported_keys


def test_unknown_key_and_wrong_type_still_stop() -> None:
    with pytest.raises(ConfigError, match=r"rtc\.udp_prot: unknown config key"):
        Config.from_yaml("rtc: {udp_prot: 7882}")
    with pytest.raises(ConfigError, match=r"rtc\.udp_port"):
        Config.from_yaml("rtc: {udp_port: 7892-7882}")
    with pytest.raises(ConfigError, match=r"webhook\.urls"):
        Config.from_yaml("webhook: {urls: 5}")
    with pytest.raises(ConfigError, match=r"rtc\.node_ip"):
        Config.from_yaml("rtc: {node_ip: not-an-ip}")
    # LiveKit's --disable-strict-config: unknown keys warn instead
    cfg = Config.from_yaml("rtc: {udp_prot: 7882}\nbogus: 1", lenient=True)
    assert sorted(cfg.unknown_keys) == ["bogus", "rtc.udp_prot"]
    assert any("bogus" in w for w in cfg.warnings())


def test_durations_and_no_limit() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5h") == 5400
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("30 seconds")
    cfg = Config.from_yaml(
        "node: {drain_deadline: 2m, stats_update_interval: 500ms}\n"
        "room: {empty_timeout: 1m, departure_timeout: 20}\n"
        "limit: {num_tracks: -1, bytes_per_sec: -1, subscription_limit_video: -1}"
    )
    assert cfg.node.drain_deadline == 120 and cfg.node.stats_update_interval == 0.5
    assert cfg.room.empty_timeout == 60
    assert (cfg.limit.num_tracks, cfg.limit.bytes_per_sec) == (0, 0)
    with pytest.raises(ConfigError, match=r"node\.drain_deadline"):
        Config.from_yaml("node: {drain_deadline: soon}")


def test_env_for_every_key_path() -> None:
    # every scalar key LiveKit makes a flag of has its LIVEKIT_<KEY_PATH> variable
    for var in ("LIVEKIT_RTC_UDP_PORT", "LIVEKIT_ROOM_EMPTY_TIMEOUT", "LIVEKIT_PROMETHEUS_PORT"):
        assert var in ENV_PATHS
    env = {
        "LIVEKIT_CONFIG": "development: true\nport: 7000\nroom: {empty_timeout: 30}",
        "LIVEKIT_PORT": "7001",
        "LIVEKIT_ROOM_EMPTY_TIMEOUT": "45s",
        "LIVEKIT_LIMIT_NUM_TRACKS": "-1",
        "LIVEKIT_RTC_USE_EXTERNAL_IP": "true",
        "LIVEKIT_WEBHOOK_API_KEY": "devkey",
        "LIVEKIT_LOGGING_JSON": "false",
        "LIVEKIT_PROMETHEUS_PORT": "6789",
    }
    cfg = Config.load(env=env)
    assert cfg.port == 7001  # env over the YAML
    assert cfg.room.empty_timeout == 45
    assert cfg.limit.num_tracks == 0
    assert cfg.webhook.api_key == "devkey"
    assert cfg.logging.json_format is False
    assert cfg.prometheus.port == 6789
    assert cfg.unsupported_keys == ["rtc.use_external_ip"]


def test_precedence_body_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("port: 1111\nregion: file\ndevelopment: true\n")
    # a config body (--config-body or LIVEKIT_CONFIG) wins over --config
    assert Config.load(path, env={}, body="port: 2222\ndevelopment: true").port == 2222
    assert Config.load(path, env={"LIVEKIT_CONFIG": "port: 3333\ndevelopment: true"}).port == 3333
    assert Config.load(path, env={}).port == 1111
    # --<key.path> flags over LIVEKIT_<KEY_PATH>; named flags over their env variables
    cfg = Config.load(
        path,
        env={
            "LIVEKIT_PORT": "4444",
            "LIVEKIT_REGION": "env",
            "REDIS_HOST": "a:1",
            "NODE_IP": "10.0.0.1",
        },
        overrides={"port": "5555"},
        flags={"region": "flag", "redis_host": "b:2", "udp_port": "7882-7884"},
    )
    assert cfg.port == 5555
    assert cfg.region == "flag"
    assert cfg.redis.address == "b:2"
    assert cfg.rtc.node_ip == "10.0.0.1"
    assert (cfg.rtc.port_range_start, cfg.rtc.port_range_end) == (7882, 7884)
    assert any("rtc.udp_port" in w for w in cfg.warnings())
    with pytest.raises(ConfigError, match=r"--rtc\.udp_prot: unknown config key"):
        Config.load(path, env={}, overrides={"rtc.udp_prot": "1"})


def test_listen_addresses_as_livekit() -> None:
    dev = Config.load(dev=True, env={})
    assert dev.dev_keys and dev.listen_addresses() == ["127.0.0.1", "::1"]
    keyed = Config.load(env={"LIVEKIT_KEYS": "k: " + "x" * 32})
    assert keyed.listen_addresses() == [""]  # every interface
    dev_keyed = Config.load(dev=True, env={"LIVEKIT_KEYS": "k: secret"})
    assert dev_keyed.listen_addresses() == [""]
    bound = Config.load(dev=True, env={}, flags={"bind": ["10.0.0.1", "10.0.0.2"]})
    assert bound.listen_addresses() == ["10.0.0.1", "10.0.0.2"]


def test_unsupported_inventory_covers_livekit_top_level() -> None:
    """Every top-level key of LiveKit's Config struct is either a field of ours, an alias, or
    listed as known-unsupported (keys read from LiveKit's pkg/config/config.go)."""
    livekit_top = {
        "port", "bind_addresses", "prometheus_port", "prometheus", "debug_handler", "rtc",
        "redis", "audio", "video", "room", "turn", "ingress", "sip", "webhook",
        "node_selector", "key_file", "keys", "region", "signal_relay", "psrpc", "log_level",
        "logging", "limit", "agents", "development", "metric", "trace", "node_stats",
        "enable_data_tracks", "enable_participant_data_blob", "api",
    }  # fmt: skip
    ours = set(Config.model_fields) | {"log_level", "prometheus_port"}
    missing = livekit_top - ours - set(LIVEKIT_UNSUPPORTED)
    assert not missing
