from __future__ import annotations

from pathlib import Path

import pytest

from trackyard.core.config import DEV_KEYS, Config, ConfigError, parse_keys


def test_dev_defaults() -> None:
    cfg = Config.load(dev=True, env={})
    assert cfg.port == 7880
    assert cfg.keys == DEV_KEYS
    assert not cfg.redis.enabled


@pytest.mark.parametrize(
    ("yaml_text", "names"),
    [
        ("rtc: {port_range_startt: 1}", "rtc.port_range_startt: unknown config key"),
        ("port: lots", "port:"),
        ("room: {max_participants: -1}", "room.max_participants"),
        ("node_selector: {regions: [{name: a}]}", "node_selector.regions.0.lat"),
        ("bogus: 1", "bogus: unknown config key"),
        ("- a list", "must be a YAML mapping"),
        ("port: [1", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(yaml_text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        Config.from_yaml(yaml_text)
    assert names in str(err.value)


def test_file_and_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    secret = "s" * 32
    path.write_text(f"port: 9000\nkeys: {{k1: {secret}}}\nredis: {{address: 'x:1'}}\n")
    cfg = Config.load(
        path,
        env={
            "REDIS_HOST": "10.1.1.1:6379",
            "LIVEKIT_REGION": "eu",
            "LIVEKIT_KEYS": f"k2: {secret}",
        },
    )
    assert cfg.port == 9000
    assert cfg.redis.address == "10.1.1.1:6379" and cfg.redis.enabled
    assert cfg.region == "eu"
    assert cfg.keys == {"k2": secret}  # LIVEKIT_KEYS replaces the config's keys, as in LiveKit


def test_livekit_config_env_holds_yaml() -> None:
    cfg = Config.load(env={"LIVEKIT_CONFIG": "development: true\nport: 7999\n"})
    assert cfg.port == 7999 and cfg.keys == DEV_KEYS


def test_short_secret_reported_outside_dev() -> None:
    """LiveKit logs an error for a secret under 32 characters and starts anyway."""
    cfg = Config.load(env={"LIVEKIT_KEYS": "k: short, k2: " + "x" * 32})
    assert cfg.short_secret_keys == ["k"]
    assert Config.load(dev=True, env={"LIVEKIT_KEYS": "k: short"}).short_secret_keys == []
    with pytest.raises(ConfigError, match="no API keys"):
        Config.load(env={})


def test_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("fromfile: " + "x" * 40 + "\n")
    keys.chmod(0o644)
    with pytest.raises(ConfigError, match=r"key_file: .* must not be accessible by others"):
        Config.load(env={"LIVEKIT_CONFIG": f"key_file: {keys}"})
    keys.chmod(0o600)
    cfg = Config.load(env={"LIVEKIT_CONFIG": f"key_file: {keys}\nkeys: {{other: {'y' * 32}}}"})
    assert cfg.keys == {"fromfile": "x" * 40}  # the key file replaces the other keys


def test_parse_keys() -> None:
    assert parse_keys("a: b, c: d") == {"a": "b", "c": "d"}
    with pytest.raises(ConfigError, match="LIVEKIT_KEYS"):
        parse_keys("nocolon")


def test_port_range_order() -> None:
    with pytest.raises(ConfigError, match="port_range_end"):
        Config.load(
            env={
                "LIVEKIT_CONFIG": "development: true\n"
                "rtc: {port_range_start: 6000, port_range_end: 5000}"
            }
        )


def test_span_section() -> None:
    cfg = Config.load(dev=True, env={})
    assert cfg.span.enabled is True and cfg.span.node_participants == 0  # spanning by default
    cfg = Config.load(
        env={
            "LIVEKIT_CONFIG": "development: true\nspan: {enabled: false, node_participants: 8}",
            "LIVEKIT_SPAN_NODE_PARTICIPANTS": "12",
        }
    )
    assert cfg.span.enabled is False
    assert cfg.span.node_participants == 12  # env over the YAML, as for LiveKit's keys
    assert cfg.unsupported_keys == []
    for bad, names in (
        ("span: {node_participants: -1}", "span.node_participants"),
        ("span: {pinned: true}", "span.pinned: unknown config key"),
    ):
        with pytest.raises(ConfigError) as err:
            Config.from_yaml(bad)
        assert names in str(err.value)
