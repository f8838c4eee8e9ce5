"""The one typed configuration object, read from YAML with LiveKit's key names.

Precedence: defaults < YAML file (``--config`` or ``LIVEKIT_CONFIG`` holding the YAML text)
< environment overrides (``LIVEKIT_KEYS``, ``REDIS_HOST``, ``NODE_IP``, ...) < CLI flags.
Unknown keys and wrong types stop start-up with a message naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEV_KEYS = {"devkey": "secret"}
MIN_SECRET_LENGTH = 32


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RTCConfig(_Section):
    port_range_start: int = Field(50000, ge=1, le=65535)
    port_range_end: int = Field(60000, ge=1, le=65535)
    tcp_port: int = 0
    node_ip: str = ""  # advertised in ICE candidates; empty = the host's addresses
    use_external_ip: bool = False
    stun_servers: list[str] = Field(default_factory=list)
    # packets kept per forwarded stream to answer NACKs
    packet_buffer_size: int = Field(500, ge=16)


class RedisConfig(_Section):
    address: str = ""  # host:port; empty = embedded in-memory store and bus
    username: str = ""
    password: str = ""
    db: int = 0
    use_tls: bool = False
    sentinel_master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    sentinel_addresses: list[str] = Field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return bool(self.address or self.sentinel_addresses)


class RoomConfig(_Section):
    auto_create: bool = True
    empty_timeout: int = Field(300, ge=0)  # seconds a room lives without ever being joined
    departure_timeout: int = Field(20, ge=0)  # seconds a room lives after its last leave
    max_participants: int = Field(0, ge=0)  # 0 = unlimited
    # an admin may unmute a participant's track (MutePublishedTrack muted=false), as LiveKit
    enable_remote_unmute: bool = False
    # LiveKit's legacy spellings of limit.*: when set (non-zero) they win, as in LiveKit
    max_metadata_size: int = Field(0, ge=0)
    max_room_name_length: int = Field(0, ge=0)
    max_participant_identity_length: int = Field(0, ge=0)


class AudioConfig(_Section):
    """Active-speaker detection, LiveKit's ``audio:`` keys and defaults."""

    active_level: int = Field(35, ge=0, le=127)  # dBov (0 loudest) counted as speaking
    min_percentile: int = Field(40, ge=0, le=100)  # % of a window spent over active_level
    update_interval: int = Field(400, ge=10)  # ms between speaker updates
    smooth_intervals: int = Field(2, ge=0)  # windows the reported level is averaged over


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    json_format: bool = Field(True, alias="json")
    pion_level: str = "error"  # accepted for LiveKit config compatibility

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RegionConfig(_Section):
    name: str
    lat: float
    lon: float


class NodeSelectorConfig(_Section):
    kind: str = "any"  # any | random | cpuload | sysload | regionaware
    sort_by: str = "random"  # random | sysload | cpuload | rooms | clients | tracks | bytespersec
    algorithm: str = "lowest"  # lowest | twochoice
    cpu_load_limit: float = 0.9
    sysload_limit: float = 0.9
    regions: list[RegionConfig] = Field(default_factory=list)


class LimitConfig(_Section):
    """LiveKit's ``limit`` section, with LiveKit's defaults; 0 means unlimited throughout.

    Sizes and lengths are counted in UTF-8 bytes, as LiveKit (Go ``len``) does. Checked in
    :mod:`trackyard.core.limits`.
    """

    num_tracks: int = Field(0, ge=0)  # nodes at or over it get no new rooms
    bytes_per_sec: float = Field(0, ge=0)
    # subscriptions per participant beyond these are not made
    subscription_limit_video: int = Field(0, ge=0)
    subscription_limit_audio: int = Field(0, ge=0)
    max_metadata_size: int = Field(512 * 1024, ge=0)  # participant and room metadata
    max_attributes_size: int = Field(64 * 1024, ge=0)  # all of a participant's keys + values
    max_room_name_length: int = Field(256, ge=0)
    max_participant_identity_length: int = Field(256, ge=0)
    max_participant_name_length: int = Field(256, ge=0)


class PrometheusConfig(_Section):
    port: int = 0


class SignalConfig(_Section):
    """Trackyard's own knobs for the signal edge."""

    max_message_size: int = Field(1 << 20, ge=1024)  # bytes per WebSocket frame
    ping_interval: int = Field(10, ge=1)
    ping_timeout: int = Field(20, ge=1)
    join_timeout: float = Field(10.0, gt=0)  # wait for the SFU's JoinResponse


class RouterConfig(_Section):
    """Where the router service listens, and where others find it."""

    bind_address: str = "127.0.0.1"
    port: int = 7890
    urls: list[str] = Field(default_factory=list)  # routers the edges call (distributed mode)


class NodeConfig(_Section):
    """Trackyard's own knobs for the SFU node."""

    stats_update_interval: float = Field(2.0, gt=0)
    drain_deadline: float = Field(0, ge=0)  # seconds; 0 = wait for the last participant
    connection_quality_interval: float = Field(5.0, gt=0)  # seconds (LiveKit's fixed 5 s)
    api_port: int = 7881  # the node's internal HTTP API (health, metrics)
    # liveness (trackyard.core.liveness): nodes and edges write a heartbeat this often; a node
    # whose heartbeat lags its peers' by dead_after is dead (also the grace after a Redis
    # restart before missing records or placements mean anything)
    heartbeat_interval: float = Field(0.5, gt=0)
    dead_after: float = Field(2.0, gt=0)
    # a participant whose edge died or whose peer connection failed leaves after this long
    # unless it came back (LiveKit's disconnectCleanupDuration, 5 s)
    reconnect_window: float = Field(5.0, ge=0)


class Config(_Section):
    port: int = Field(7880, ge=0, le=65535)
    bind_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    development: bool = False
    keys: dict[str, str] = Field(default_factory=dict)
    key_file: str = ""
    region: str = ""
    rtc: RTCConfig = Field(default_factory=RTCConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    room: RoomConfig = Field(default_factory=RoomConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    node_selector: NodeSelectorConfig = Field(default_factory=NodeSelectorConfig)
    limit: LimitConfig = Field(default_factory=LimitConfig)
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    signal: SignalConfig = Field(default_factory=SignalConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_not_none(cls, v: Any) -> Any:
        return {} if v is None else v

    @model_validator(mode="after")
    def _legacy_room_limits(self) -> Config:
        """``room.max_metadata_size`` & co. are LiveKit's old names of the limits: copy them."""
        for key in ("max_metadata_size", "max_room_name_length", "max_participant_identity_length"):
            value = getattr(self.room, key)
            if value:
                setattr(self.limit, key, value)
        return self

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_yaml(cls, text: str) -> Config:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("config must be a YAML mapping of keys to values")
        return cls.from_mapping(data)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        dev: bool = False,
    ) -> Config:
        """Read the file (or ``LIVEKIT_CONFIG``), apply env overrides, resolve keys."""
        env = os.environ if env is None else env
        if path is not None:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        else:
            text = env.get("LIVEKIT_CONFIG", "")
        data: dict[str, Any] = {}
        if text.strip():
            loaded = yaml.safe_load(text)
            if not isinstance(loaded, dict):
                raise ConfigError("config must be a YAML mapping of keys to values")
            data = loaded
        _apply_env(data, env)
        if dev:
            data.setdefault("development", True)
        cfg = cls.from_mapping(data)
        cfg._resolve_keys(env)
        return cfg

    def _resolve_keys(self, env: Mapping[str, str]) -> None:
        keys = dict(self.keys)
        if self.key_file:
            try:
                loaded = yaml.safe_load(Path(self.key_file).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"key_file: cannot read {self.key_file}: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError("key_file: must hold 'key: secret' lines")
            keys.update({str(k): str(v) for k, v in loaded.items()})
        if env.get("LIVEKIT_KEYS"):
            keys.update(parse_keys(env["LIVEKIT_KEYS"]))
        if not keys and self.development:
            keys = dict(DEV_KEYS)
        if not keys:
            raise ConfigError("keys: no API keys configured (set keys, key_file or LIVEKIT_KEYS)")
        if not self.development:
            for key, secret in keys.items():
                if len(secret) < MIN_SECRET_LENGTH:
                    raise ConfigError(
                        f"keys.{key}: secret is shorter than {MIN_SECRET_LENGTH} characters"
                    )
        self.keys = keys
        if self.rtc.port_range_end < self.rtc.port_range_start:
            raise ConfigError("rtc.port_range_end: must not be below rtc.port_range_start")


def parse_keys(text: str) -> dict[str, str]:
    """``"key1: secret1, key2: secret2"`` (LIVEKIT_KEYS syntax) or YAML lines."""
    out: dict[str, str] = {}
    for part in text.replace("\n", ",").split(","):
        if not part.strip():
            continue
        key, sep, secret = part.partition(":")
        if not sep or not key.strip() or not secret.strip():
            raise ConfigError("LIVEKIT_KEYS: expected 'key: secret' pairs separated by commas")
        out[key.strip()] = secret.strip()
    return out


_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "REDIS_HOST": ("redis", "address"),
    "REDIS_PASSWORD": ("redis", "password"),
    "NODE_IP": ("rtc", "node_ip"),
    "LIVEKIT_REGION": ("region",),
    "LIVEKIT_PORT": ("port",),
    "LIVEKIT_LOG_LEVEL": ("logging", "level"),
}


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, path in _ENV_OVERRIDES.items():
        if var not in env:
            continue
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = env[var]


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown config key")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "invalid config: " + "; ".join(lines)
