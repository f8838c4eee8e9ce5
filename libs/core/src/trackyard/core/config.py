"""The one typed configuration object, read from YAML with LiveKit's key names.

Precedence, as in ``livekit-server``: defaults < the YAML (``--config-body`` /
``LIVEKIT_CONFIG`` text, else the ``--config`` file) < ``LIVEKIT_<KEY_PATH>`` environment
variables and ``--<key.path>`` flags < the named flags (``--keys``, ``--redis-host``,
``--node-ip``, ... and their environment variables ``LIVEKIT_KEYS``, ``REDIS_HOST``,
``NODE_IP``, ...).

Every key of LiveKit's config is known. Keys Trackyard acts on behave as in LiveKit; LiveKit keys
it does not act on are listed in :data:`LIVEKIT_UNSUPPORTED`: they are accepted and reported
(one warning line naming them), or refused with ``strict``. Unknown keys and wrong types stop
start-up with a message naming the key (``lenient`` turns unknown keys into a warning, as
LiveKit's ``--disable-strict-config``).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

DEV_KEYS = {"devkey": "secret"}
MIN_SECRET_LENGTH = 32


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the offending key."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """A Go duration string (``300ms``, ``1m30s``, ``-2h``) in seconds."""
    raw = text.strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 500ms, 1m30s)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def _seconds(value: Any) -> Any:
    """Numbers are seconds; strings may be numbers or Go durations (``30s``)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return parse_duration(value)
    return value


def _whole_seconds(value: Any) -> Any:
    value = _seconds(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _no_limit(value: Any) -> Any:
    """LiveKit's "-1 (or any negative) disables a limit": we spell no limit 0."""
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        return 0
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]
WholeSeconds = Annotated[int, BeforeValidator(_whole_seconds)]
Limit = Annotated[int, BeforeValidator(_no_limit)]
FloatLimit = Annotated[float, BeforeValidator(_no_limit)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _port_range(value: Any) -> Any:
    """LiveKit's ``rtc.udp_port``: ``7882`` or ``"7882-7892"`` -> ``(start, end)``."""
    if value is None or value == "" or value == 0:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, str):
        start, sep, end = value.partition("-")
        try:
            first = int(start.strip())
            last = int(end.strip()) if sep else first
        except ValueError:
            raise ValueError(f"invalid port range {value!r}, should be <start>-<end>") from None
        if sep and last <= first:
            raise ValueError(f"end port {last} must be greater than start port {first}")
        return (first, last)
    return value


# TURN credential lifetimes, as LiveKit (``pkg/config/config.go``): a ``secret`` entry's
# ``ttl`` of 0 means 4 h, a negative one 5 min, and none exceeds 24 h
TURN_DEFAULT_TTL = 14400
TURN_FALLBACK_TTL = 300
TURN_MAX_TTL = 24 * 60 * 60


class TURNServerConfig(_Section):
    """One entry of LiveKit's ``rtc.turn_servers``: a TURN server handed to clients (and, with
    ``node.use_turn_servers``, used by the node). Credentials: a shared ``secret`` (or
    ``secret_file``) for ephemeral TURN REST credentials (coturn's ``use-auth-secret``), or a
    static ``username`` + ``credential``. Secret files are read at start-up
    (:meth:`Config.load_turn_secrets`), as LiveKit does."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    # udp -> turn:...?transport=udp, tcp (LiveKit's default) -> ?transport=tcp,
    # tls -> turns:...?transport=tcp
    protocol: Literal["udp", "tcp", "tls"] = "tcp"
    username: str = ""
    credential: str = ""
    secret: str = ""
    secret_file: str = ""
    ttl: int = 0  # seconds; see TURN_DEFAULT_TTL

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        if value is None or value == "":
            return "tcp"
        return value.lower() if isinstance(value, str) else value

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: int) -> int:
        return min(value, TURN_MAX_TTL)

    @property
    def credential_ttl(self) -> int:
        """Seconds a generated credential is valid (LiveKit's defaulting and clamping)."""
        if self.ttl == 0:
            return TURN_DEFAULT_TTL
        return TURN_FALLBACK_TTL if self.ttl < 0 else min(self.ttl, TURN_MAX_TTL)


class RTCConfig(_Section):
    port_range_start: int = Field(50000, ge=1, le=65535)
    port_range_end: int = Field(60000, ge=1, le=65535)
    # LiveKit's single-port UDP mux; Trackyard has no mux: when port_range_* are not set,
    # ICE sockets are confined to this range instead (a warning says so)
    udp_port: Annotated[tuple[int, int] | None, BeforeValidator(_port_range)] = None
    # advertised in ICE candidates; empty = the host's addresses. LiveKit's "<ipv4>,<ipv6>"
    # form is accepted; the IPv4 address is advertised.
    node_ip: str = ""
    stun_servers: list[str] = Field(default_factory=list)
    # TURN servers for clients (JoinResponse/ReconnectResponse ice_servers), LiveKit's shape
    turn_servers: list[TURNServerConfig] = Field(default_factory=list)
    # packets kept per forwarded stream to answer NACKs
    packet_buffer_size: int = Field(500, ge=16)

    @field_validator("node_ip", mode="before")
    @classmethod
    def _node_ip(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            return value
        parts = [p.strip() for p in value.split(",")]
        if len(parts) > 2:
            raise ValueError(f"invalid node ip {value}, should be <ipv4>,<ipv6>")
        ips = []
        for part in parts:
            try:
                ips.append(ipaddress.ip_address(part))
            except ValueError:
                raise ValueError(f"invalid ip {part}") from None
        v4 = [ip for ip in ips if ip.version == 4]
        return str(v4[0] if v4 else ips[0])

    _range_from_udp_port: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _udp_port_as_range(self) -> RTCConfig:
        if self.udp_port is not None and not (
            {"port_range_start", "port_range_end"} & self.model_fields_set
        ):
            self.port_range_start, self.port_range_end = self.udp_port
            self._range_from_udp_port = True
        return self


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
    empty_timeout: WholeSeconds = Field(300, ge=0)  # seconds a room lives never joined
    departure_timeout: WholeSeconds = Field(20, ge=0)  # seconds a room lives after its last leave
    max_participants: int = Field(0, ge=0)  # 0 = unlimited
    # Trackyard's own (sfu/updates.py): client messages a second a room may spend on the joins,
    # state changes and leaves of non-publishers before it batches them (0: always batch, as
    # LiveKit), and the seconds a batch waits (LiveKit's fixed 3 s; 0: never batch)
    participant_update_rate: float = Field(1000.0, ge=0)
    participant_update_interval: float = Field(3.0, ge=0)
    # bytes of participant infos per ParticipantUpdate message (LiveKit's key and default)
    update_batch_target_size: int = Field(128 * 1024, ge=0)
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

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

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

    num_tracks: Limit = Field(0, ge=0)  # nodes at or over it get no new rooms
    bytes_per_sec: FloatLimit = Field(0, ge=0)
    # subscriptions per participant beyond these are not made
    subscription_limit_video: Limit = Field(0, ge=0)
    subscription_limit_audio: Limit = Field(0, ge=0)
    max_metadata_size: Limit = Field(512 * 1024, ge=0)  # participant and room metadata
    max_attributes_size: Limit = Field(64 * 1024, ge=0)  # all of a participant's keys + values
    max_room_name_length: Limit = Field(256, ge=0)
    max_participant_identity_length: Limit = Field(256, ge=0)
    max_participant_name_length: Limit = Field(256, ge=0)
    # bytes per client WebSocket frame (LiveKit's default 2 MiB); when set it becomes
    # signal.max_message_size
    signal_message_size_limit: Limit = Field(0, ge=0)


class PrometheusConfig(_Section):
    """LiveKit's ``prometheus`` section (``prometheus_port`` is its older spelling)."""

    port: int = Field(0, ge=0, le=65535)  # 0 = no metrics listener
    username: str = ""  # with password: HTTP basic auth on the metrics listener
    password: str = ""


class URLNotifierConfig(_Section):
    num_workers: int = Field(10, ge=1)  # concurrent deliveries
    queue_size: int = Field(100, ge=1)  # events held; when full, new events are dropped


class WebhookFilterConfig(_Section):
    include_events: list[str] = Field(default_factory=list)
    exclude_events: list[str] = Field(default_factory=list)


class WebhookConfig(_Section):
    """LiveKit's ``webhook`` section: room events POSTed to ``urls``, signed with ``api_key``."""

    urls: list[str] = Field(default_factory=list)
    api_key: str = ""
    url_notifier: URLNotifierConfig = Field(default_factory=URLNotifierConfig)
    filter_params: WebhookFilterConfig = Field(default_factory=WebhookFilterConfig)
    # Trackyard's own: delivery attempts per event and the backoff between them
    max_attempts: int = Field(6, ge=1)
    retry_wait_min: Seconds = Field(0.5, gt=0)
    retry_wait_max: Seconds = Field(5.0, gt=0)
    request_timeout: Seconds = Field(10.0, gt=0)


class SignalConfig(_Section):
    """Trackyard's own knobs for the signal edge."""

    max_message_size: int = Field(1 << 20, ge=1024)  # bytes per WebSocket frame
    ping_interval: int = Field(10, ge=1)
    ping_timeout: int = Field(20, ge=1)
    join_timeout: Seconds = Field(10.0, gt=0)  # wait for the SFU's JoinResponse
    # on SIGTERM the edge asks its clients to resume elsewhere (leave{RESUME}) and exits when
    # their sockets are gone; at this deadline it closes the rest (1001) and exits
    drain_deadline: Seconds = Field(5.0, gt=0)


class RouterConfig(_Section):
    """Where the router service listens, and where others find it."""

    bind_address: str = "127.0.0.1"
    port: int = 7890
    urls: list[str] = Field(default_factory=list)  # routers the edges call (distributed mode)


class NodeConfig(_Section):
    """Trackyard's own knobs for the SFU node."""

    stats_update_interval: Seconds = Field(2.0, gt=0)
    drain_deadline: Seconds = Field(0, ge=0)  # seconds; 0 = wait for the last participant
    connection_quality_interval: Seconds = Field(5.0, gt=0)  # seconds (LiveKit's fixed 5 s)
    api_port: int = 7881  # the node's internal HTTP API (health, metrics)
    # liveness (trackyard.core.liveness): nodes and edges write a heartbeat this often; a node
    # whose heartbeat lags its peers' by dead_after is dead (also the grace after a Redis
    # restart before missing records or placements mean anything)
    heartbeat_interval: Seconds = Field(0.5, gt=0)
    dead_after: Seconds = Field(2.0, gt=0)
    # a participant whose edge died or whose peer connection failed leaves after this long
    # unless it came back (LiveKit's disconnectCleanupDuration, 5 s)
    reconnect_window: Seconds = Field(5.0, ge=0)
    # the node's own peer connections gather relay candidates through the first usable
    # rtc.turn_servers entry (udp/tcp; aiortc takes one TURN server). Off by default: a node
    # is reachable on node_ip, and each allocation costs a round trip at every join
    use_turn_servers: bool = False
    # SFU processes per host (``trackyard sfu --workers``): one node per core; 0 = one per core
    workers: int = Field(1, ge=0)
    # what the nodes of one host share in their records (default: the host name)
    host_id: str = ""


class SpanConfig(_Section):
    """Trackyard's own: rooms that span SFU nodes. A room keeps its home node (its placement)
    and extends to more nodes; the router seats each joining participant on one node of the
    room in the joining edge's region (:meth:`trackyard.router.placement.Placer.seat`)."""

    enabled: bool = True  # False: every participant joins the room's home node (one node)
    # a node takes at most this many of ONE room's participants before the room extends to
    # another node of the region; 0 = only the load limits (node_selector, limit) decide
    node_participants: int = Field(0, ge=0)


# LiveKit config keys Trackyard knows but does not act on (``pkg/config/config.go`` and the
# structs it embeds from livekit/protocol and livekit/mediatransportutil). A path names a key or
# a whole section. Such keys start the server with one warning naming them (``strict``: an
# error); set to an empty/false/zero value they ask for nothing and are not reported.
LIVEKIT_UNSUPPORTED: frozenset[str] = frozenset(
    {
        # whole sections
        "turn",
        "ingress",
        "sip",
        "psrpc",
        "agents",
        "metric",
        "trace",
        "node_stats",
        "signal_relay",
        "video",
        "api",
        "debug_handler",
        "debug_handler_port",
        "enable_data_tracks",
        "enable_participant_data_blob",
        # rtc (LiveKit's own and mediatransportutil's rtcconfig)
        "rtc.tcp_port",
        "rtc.use_external_ip",
        "rtc.use_stun_port_as_ice",
        "rtc.use_ice_lite",
        "rtc.interfaces",
        "rtc.ips",
        "rtc.enable_loopback_candidate",
        "rtc.use_mdns",
        "rtc.external_ip_only",
        "rtc.advertise_internal_ip",
        "rtc.skip_external_ip_validation",
        "rtc.batch_io",
        "rtc.sctp_min_cwnd",
        "rtc.sctp_fast_rtx_wnd",
        "rtc.sctp_cwnd_ca_step",
        "rtc.force_tcp",
        "rtc.enable_warp",
        "rtc.strict_acks",
        "rtc.packet_buffer_size_video",
        "rtc.packet_buffer_size_audio",
        "rtc.pli_throttle",
        "rtc.congestion_control",
        "rtc.allow_tcp_fallback",
        "rtc.tcp_fallback_rtt_threshold",
        "rtc.allow_udp_unstable_fallback",
        "rtc.reconnect_on_publication_error",
        "rtc.reconnect_on_subscription_error",
        "rtc.reconnect_on_data_channel_error",
        "rtc.data_channel_max_buffered_amount",
        "rtc.datachannel_slow_threshold",
        "rtc.datachannel_lossy_target_latency",
        "rtc.datachannel_data_track_target_latency",
        "rtc.forward_stats",
        "rtc.enable_rtp_stream_restart_detection",
        # redis (livekit/protocol redis.RedisConfig)
        "redis.tls",
        "redis.cluster_addresses",
        "redis.dial_timeout",
        "redis.read_timeout",
        "redis.write_timeout",
        "redis.max_redirects",
        "redis.pool_timeout",
        "redis.pool_size",
        # room
        "room.enabled_codecs",
        "room.playout_delay",
        "room.sync_streams",
        "room.create_room_timeout",
        "room.create_room_attempts",
        "room.enable_full_room_in_webhooks",
        "room.room_configurations",
        # audio
        "audio.active_red_encoding",
        "audio.enable_loss_proxying",
        # logging (livekit/protocol logger.Config)
        "logging.pion_level",
        "logging.sample",
        "logging.component_levels",
        "logging.sample_initial",
        "logging.sample_interval",
        "logging.item_sample_seconds",
        "logging.item_sample_initial",
        "logging.item_sample_interval",
        # limit
        "limit.max_data_blob_key_length",
        "limit.max_data_blobs_size",
        "limit.max_data_track_custom_encoding_length",
        "limit.agent_signal_message_size_limit",
        "limit.max_api_request_body_size",
        # webhook (livekit/protocol webhook.WebHookConfig)
        "webhook.resource_url_notifier",
    }
)

# LiveKit's older spellings of keys, moved to their place before validation (LiveKit lets the
# old one win when both are set).
_ALIASES: dict[str, tuple[str, ...]] = {
    "log_level": ("logging", "level"),
    "prometheus_port": ("prometheus", "port"),
}


class Config(_Section):
    port: int = Field(7880, ge=0, le=65535)
    # addresses to listen on; none = every interface (dev mode without keys: loopback only)
    bind_addresses: list[str] = Field(default_factory=list)
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
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    signal: SignalConfig = Field(default_factory=SignalConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    node: NodeConfig = Field(default_factory=NodeConfig)
    span: SpanConfig = Field(default_factory=SpanConfig)

    # what loading noticed, for the one start-up warning (see :meth:`warnings`)
    _unsupported: list[str] = PrivateAttr(default_factory=list)
    _unknown: list[str] = PrivateAttr(default_factory=list)
    _short_secrets: list[str] = PrivateAttr(default_factory=list)
    _dev_keys: bool = PrivateAttr(default=False)

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_not_none(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("bind_addresses", mode="before")
    @classmethod
    def _bind_not_none(cls, v: Any) -> Any:
        return [] if v is None else v

    @model_validator(mode="after")
    def _legacy_room_limits(self) -> Config:
        """``room.max_metadata_size`` & co. are LiveKit's old names of the limits: copy them."""
        for key in ("max_metadata_size", "max_room_name_length", "max_participant_identity_length"):
            value = getattr(self.room, key)
            if value:
                setattr(self.limit, key, value)
        if "signal_message_size_limit" in self.limit.model_fields_set:
            size = self.limit.signal_message_size_limit
            self.signal.max_message_size = size if size else 1 << 31
        return self

    # -- what loading noticed -----------------------------------------------------------

    @property
    def unsupported_keys(self) -> list[str]:
        """LiveKit keys in the config that Trackyard does not act on."""
        return list(self._unsupported)

    @property
    def unknown_keys(self) -> list[str]:
        """Keys nobody knows, kept only in lenient mode."""
        return list(self._unknown)

    @property
    def short_secret_keys(self) -> list[str]:
        """API keys whose secret is shorter than 32 characters outside dev mode."""
        return list(self._short_secrets)

    def warnings(self) -> list[str]:
        """One line per kind of problem worth a warning at start-up."""
        out = []
        if self._unsupported:
            out.append(
                "config keys not supported by trackyard (ignored): " + ", ".join(self._unsupported)
            )
        if self._unknown:
            out.append("unknown config keys (ignored): " + ", ".join(self._unknown))
        if self.rtc._range_from_udp_port:
            out.append(
                "rtc.udp_port: trackyard has no single-port UDP mux; ICE sockets use ports "
                f"{self.rtc.port_range_start}-{self.rtc.port_range_end} (one per connection)"
            )
        return out

    @property
    def dev_keys(self) -> bool:
        """The placeholder ``devkey: secret`` is in use (dev mode, no keys configured)."""
        return self._dev_keys

    def listen_addresses(self) -> list[str]:
        """Where the public port listens: ``bind_addresses``; none given: every interface
        (``""``), or loopback in dev mode with the placeholder keys, as LiveKit does."""
        if self.bind_addresses:
            return list(self.bind_addresses)
        if self.development and self._dev_keys:
            return ["127.0.0.1", "::1"]
        return [""]

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, strict: bool = False, lenient: bool = False
    ) -> Config:
        """Validate ``data``. ``strict``: unsupported LiveKit keys are errors. ``lenient``:
        unknown keys are dropped (and reported) instead of refused."""
        work = copy.deepcopy(dict(data))
        _move_aliases(work)
        unsupported = _take_unsupported(work)
        if strict and unsupported:
            raise ConfigError(
                "config keys not supported by trackyard (--strict): " + ", ".join(unsupported)
            )
        unknown: list[str] = []
        while True:
            try:
                cfg = cls.model_validate(work)
                break
            except ValidationError as exc:
                extra = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
                if not lenient or not extra or len(extra) != len(exc.errors()):
                    raise ConfigError(_describe(exc)) from None
                for loc in extra:
                    unknown.append(".".join(str(p) for p in loc))
                    _pop_path(work, loc)
        cfg._unsupported = unsupported
        cfg._unknown = unknown
        return cfg

    @classmethod
    def from_yaml(cls, text: str, *, strict: bool = False, lenient: bool = False) -> Config:
        return cls.from_mapping(_parse_yaml(text), strict=strict, lenient=lenient)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        dev: bool = False,
        body: str | None = None,
        flags: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        strict: bool = False,
        lenient: bool = False,
    ) -> Config:
        """Read the config the way ``livekit-server`` does.

        ``body`` (``--config-body``, else ``LIVEKIT_CONFIG``) wins over the file at ``path``.
        ``overrides``: ``{"rtc.udp_port": "7882"}`` from ``--<key.path>`` flags (over the
        ``LIVEKIT_<KEY_PATH>`` variables). ``flags``: the named flags (``keys``, ``key_file``,
        ``region``, ``redis_host``, ``redis_password``, ``node_ip``, ``udp_port``, ``bind``,
        ``dev``), over their environment variables.
        """
        env = os.environ if env is None else env
        flags = dict(flags or {})
        text = body if body else env.get("LIVEKIT_CONFIG", "")
        if not text and path is not None:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        data = _parse_yaml(text) if text.strip() else {}
        _move_aliases(data)
        for var, key_path in ENV_PATHS.items():
            if env.get(var, "") != "":
                _set_path(data, key_path, env[var])
        for dotted, value in (overrides or {}).items():
            if dotted not in FLAG_PATHS:
                raise ConfigError(f"--{dotted}: unknown config key")
            _set_path(data, FLAG_PATHS[dotted], value)
        named = {**{k: env[v] for k, v in _NAMED_ENV.items() if env.get(v)}, **flags}
        for name, key_path in _NAMED_PATHS.items():
            if named.get(name) not in (None, ""):
                _set_path(data, key_path, named[name])
        if named.get("bind"):
            data["bind_addresses"] = list(named["bind"])
        if dev or named.get("dev"):
            data["development"] = True
        cfg = cls.from_mapping(data, strict=strict, lenient=lenient)
        cfg._resolve_keys(named.get("keys"))
        cfg.load_turn_secrets()
        return cfg

    def load_turn_secrets(self) -> None:
        """LiveKit's ``LoadTURNSecrets``: each ``rtc.turn_servers`` entry gets its ``secret``
        (trimmed; an inline one wins over ``secret_file``, a file must not be accessible by
        others and must not be empty) and must end up with a secret or username + credential."""
        for i, server in enumerate(self.rtc.turn_servers):
            where = f"rtc.turn_servers.{i}"
            secret = server.secret.strip()
            if not secret and server.secret_file:
                path = Path(os.path.expanduser(os.path.expandvars(server.secret_file)))
                try:
                    if path.stat().st_mode & stat.S_IRWXO:
                        raise ConfigError(
                            f"{where}.secret_file: {path} must not be accessible by others "
                            "(chmod 600)"
                        )
                    secret = path.read_text().strip()
                except OSError as exc:
                    raise ConfigError(
                        f"{where}.secret_file: cannot read {server.secret_file}: {exc.strerror}"
                    ) from None
                if not secret:
                    raise ConfigError(f"{where}.secret_file: {path} is empty")
            server.secret = secret
            if not secret and not (server.username and server.credential):
                raise ConfigError(
                    f"{where}: TURN server {server.host!r} has no usable credentials: set "
                    "secret/secret_file, or username and credential"
                )

    def _resolve_keys(self, keys_text: str | None) -> None:
        """LiveKit's order: ``--keys``/``LIVEKIT_KEYS`` replace the config's keys; a key file
        (which must not be readable by others) replaces them all; dev mode without keys uses
        ``devkey: secret``. Short secrets outside dev mode are reported, not refused."""
        keys = dict(self.keys)
        if keys_text:
            keys = parse_keys(keys_text)
        if self.key_file:
            path = Path(os.path.expanduser(os.path.expandvars(self.key_file)))
            try:
                mode = path.stat().st_mode
                if mode & (stat.S_IRWXO):
                    raise ConfigError(
                        f"key_file: {path} must not be accessible by others (chmod 600)"
                    )
                loaded = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"key_file: cannot read {self.key_file}: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError("key_file: must hold 'key: secret' lines")
            keys = {str(k): str(v) for k, v in loaded.items()}
        if not keys and self.development:
            keys = dict(DEV_KEYS)
            self._dev_keys = True
        if not keys:
            raise ConfigError("keys: no API keys configured (set keys, key_file or LIVEKIT_KEYS)")
        if not self.development:
            self._short_secrets = [k for k, v in keys.items() if len(v) < MIN_SECRET_LENGTH]
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
        out[key.strip()] = secret.strip().strip("\"'")
    return out


# -- the key inventory ------------------------------------------------------------------


def _parse_yaml(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("config must be a YAML mapping of keys to values")
    return data


def _scalar_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every key path of ``model`` holding a scalar (LiveKit makes flags of exactly these)."""
    for name, field in model.model_fields.items():
        key = field.alias or name
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _scalar_paths(ann, (*prefix, key))
        elif ann in (str, int, float, bool) or name == "udp_port":
            yield (*prefix, key)


def _all_scalar_paths() -> list[tuple[str, ...]]:
    paths = list(_scalar_paths(Config))
    paths += [tuple(p.split(".")) for p in sorted(LIVEKIT_UNSUPPORTED)]
    paths += [(alias,) for alias in _ALIASES]
    return paths


# ``--rtc.udp_port`` -> ("rtc", "udp_port"); ``LIVEKIT_RTC_UDP_PORT`` -> the same
FLAG_PATHS: dict[str, tuple[str, ...]] = {".".join(p): p for p in _all_scalar_paths()}
ENV_PATHS: dict[str, tuple[str, ...]] = {
    "LIVEKIT_" + "_".join(p).upper(): p for p in _all_scalar_paths() if p != ("keys",)
}
ENV_PATHS.pop("LIVEKIT_KEY_FILE", None)  # LiveKit reads the key file from the flag only

# livekit-server's named flags and the environment variables behind them
_NAMED_ENV = {
    "keys": "LIVEKIT_KEYS",
    "region": "LIVEKIT_REGION",
    "node_ip": "NODE_IP",
    "udp_port": "UDP_PORT",
    "redis_host": "REDIS_HOST",
    "redis_password": "REDIS_PASSWORD",
}
_NAMED_PATHS: dict[str, tuple[str, ...]] = {
    "key_file": ("key_file",),
    "region": ("region",),
    "node_ip": ("rtc", "node_ip"),
    "udp_port": ("rtc", "udp_port"),
    "redis_host": ("redis", "address"),
    "redis_password": ("redis", "password"),
}


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _pop_path(data: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    node: Any = data
    for part in loc[:-1]:
        node = node[part]
    node.pop(loc[-1], None)


def _move_aliases(data: dict[str, Any]) -> None:
    for alias, path in _ALIASES.items():
        if alias in data:
            value = data.pop(alias)
            if value not in (None, "", 0):
                _set_path(data, path, value)


def _asks_for_something(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_asks_for_something(v) for v in value.values())
    return value not in (None, False, 0, "", [], {})


def _leaves(value: Any, path: str) -> list[str]:
    if isinstance(value, dict) and value:
        out: list[str] = []
        for k, v in value.items():
            out.extend(_leaves(v, f"{path}.{k}"))
        return out
    return [path] if _asks_for_something(value) else []


def _take_unsupported(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Remove the LiveKit keys we do not act on from ``data``; return the ones set."""
    found: list[str] = []
    for key in list(data):
        path = f"{prefix}{key}"
        if path in LIVEKIT_UNSUPPORTED:
            found.extend(_leaves(data.pop(key), path))
        elif isinstance(data[key], dict) and path not in ("keys",):
            found.extend(_take_unsupported(data[key], path + "."))
    return found


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown config key")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "invalid config: " + "; ".join(lines)
