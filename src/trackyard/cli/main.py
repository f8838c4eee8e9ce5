"""The ``trackyard`` command."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer

from trackyard.cli.drain import describe_deadline, drain_command
from trackyard.cli.loadtest import load_test_command
from trackyard.core.auth import VideoGrants, create_token
from trackyard.core.config import FLAG_PATHS, Config, ConfigError
from trackyard.core.logging import setup_logging

cli = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Trackyard: a LiveKit-compatible SFU. Without a command: run the server, as "
    "livekit-server does (edge, router and SFU node in one process; distributed when redis is "
    "configured).",
)
token_app = typer.Typer(no_args_is_help=True, help="Access tokens")
cli.add_typer(token_app, name="token")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (LiveKit key names)")
]


@dataclass
class LoadOptions:
    """livekit-server's flags, given before the command (or without one)."""

    config: Path | None = None
    body: str | None = None
    dev: bool = False
    strict: bool = False
    lenient: bool = False
    port: int | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)


_OPTIONS: list[LoadOptions] = []  # set by the root callback, read by every command


def _options() -> LoadOptions:
    return _OPTIONS[-1] if _OPTIONS else LoadOptions()


def _load(
    config: Path | None,
    *,
    dev: bool = False,
    port: int | None = None,
    bind: list[str] | None = None,
    region: str | None = None,
) -> Config:
    opts = _options()
    flags = dict(opts.flags)
    if bind:
        flags["bind"] = bind
    if region is not None:
        flags["region"] = region
    try:
        cfg = Config.load(
            config or opts.config,
            body=opts.body,
            dev=dev or opts.dev,
            flags=flags,
            overrides=opts.overrides,
            strict=opts.strict,
            lenient=opts.lenient,
        )
        if port is not None or opts.port is not None:
            cfg.port = port if port is not None else opts.port  # type: ignore[assignment]
    except ConfigError as exc:
        typer.echo(f"trackyard: {exc}", err=True)
        raise typer.Exit(2) from None
    # dev mode logs for people (console) unless the config asks for JSON explicitly
    explicit_json = "json_format" in cfg.logging.model_fields_set
    setup_logging(
        cfg.logging.level,
        json=cfg.logging.json_format if explicit_json else not cfg.development,
    )
    log = structlog.get_logger("trackyard.config")
    for line in cfg.warnings():
        log.warning(line)
    for key in cfg.short_secret_keys:
        log.error("secret is too short, should be at least 32 characters for security", api_key=key)
    return cfg


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run a service; configuration refused at start-up is a one-line error, exit status 2."""
    from trackyard.router.selector import SelectorError

    try:
        return asyncio.run(main)
    except (ConfigError, SelectorError) as exc:
        typer.echo(f"trackyard: invalid config: {exc}", err=True)
        return 2
    except OSError as exc:  # a port that cannot be bound
        typer.echo(f"trackyard: {exc}", err=True)
        return 1


@cli.callback()
def root(
    ctx: typer.Context,
    config: ConfigOpt = None,
    config_body: Annotated[
        str | None,
        typer.Option(
            "--config-body", help="config YAML text (env LIVEKIT_CONFIG); wins over --config"
        ),
    ] = None,
    dev: Annotated[bool, typer.Option("--dev", help="development mode (devkey: secret)")] = False,
    keys: Annotated[
        str | None, typer.Option("--keys", help="API keys, 'key: secret' (env LIVEKIT_KEYS)")
    ] = None,
    key_file: Annotated[
        str | None, typer.Option("--key-file", help="file of 'key: secret' lines")
    ] = None,
    bind: Annotated[
        list[str] | None, typer.Option("--bind", help="address to listen on (repeatable)")
    ] = None,
    node_ip: Annotated[
        str | None, typer.Option("--node-ip", help="IP advertised to clients (env NODE_IP)")
    ] = None,
    udp_port: Annotated[
        str | None, typer.Option("--udp-port", help="UDP port(s) for WebRTC (env UDP_PORT)")
    ] = None,
    redis_host: Annotated[
        str | None, typer.Option("--redis-host", help="Redis host:port (env REDIS_HOST)")
    ] = None,
    redis_password: Annotated[
        str | None, typer.Option("--redis-password", help="Redis password (env REDIS_PASSWORD)")
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="this node's region (env LIVEKIT_REGION)")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="signal/API port")] = None,
    turn_cert: Annotated[
        str | None, typer.Option("--turn-cert", help="accepted; Trackyard has no TURN server")
    ] = None,
    turn_key: Annotated[
        str | None, typer.Option("--turn-key", help="accepted; Trackyard has no TURN server")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="LiveKit config keys Trackyard ignores are errors")
    ] = False,
    disable_strict_config: Annotated[
        bool, typer.Option("--disable-strict-config", help="unknown config keys only warn")
    ] = False,
) -> None:
    named = {
        "keys": keys,
        "key_file": key_file,
        "node_ip": node_ip,
        "udp_port": udp_port,
        "redis_host": redis_host,
        "redis_password": redis_password,
        "region": region,
        "bind": bind,
    }
    given = ctx.obj.get("overrides", {}) if isinstance(ctx.obj, dict) else {}
    overrides: dict[str, str] = dict(given)
    if turn_cert or turn_key:
        overrides.setdefault("turn.cert_file", turn_cert or "")
        overrides.setdefault("turn.key_file", turn_key or "")
    _OPTIONS[:] = [
        LoadOptions(
            config=config,
            body=config_body,
            dev=dev,
            strict=strict,
            lenient=disable_strict_config,
            port=port,
            flags={k: v for k, v in named.items() if v},
            overrides={k: v for k, v in overrides.items() if v},
        )
    ]
    if ctx.invoked_subcommand is None:
        from trackyard.cli.dev import run_all_in_one

        cfg = _load(None)
        sys.exit(_run(run_all_in_one(cfg)))


@cli.command()
def dev(
    config: ConfigOpt = None,
    port: Annotated[int | None, typer.Option(help="signal/API port (default 7880)")] = None,
    bind: Annotated[list[str] | None, typer.Option(help="address to listen on")] = None,
) -> None:
    """Everything in one process with the embedded store and bus (keys devkey: secret)."""
    from trackyard.cli.dev import run_all_in_one

    cfg = _load(config, dev=True, port=port, bind=bind)
    sys.exit(_run(run_all_in_one(cfg)))


PortOpt = Annotated[int | None, typer.Option(help="port to listen on")]
RegionOpt = Annotated[str | None, typer.Option(help="this process's region (overrides config)")]


@cli.command()
def signal(config: ConfigOpt = None, port: PortOpt = None, region: RegionOpt = None) -> None:
    """The signal edge: client WebSockets and RoomService, bridged to SFU nodes via Redis."""
    from trackyard.cli.services import run_signal

    cfg = _load(config, port=port, region=region)
    sys.exit(_run(run_signal(cfg)))


@cli.command()
def router(config: ConfigOpt = None, port: PortOpt = None, region: RegionOpt = None) -> None:
    """The router: runs the node selector and places rooms atomically."""
    from trackyard.cli.services import run_router

    cfg = _load(config, region=region)
    if port is not None:
        cfg.router.port = port
    sys.exit(_run(run_router(cfg)))


@cli.command()
def sfu(
    config: ConfigOpt = None,
    port: PortOpt = None,
    region: RegionOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="SFU processes on this host, each its own node with its own slice of the port"
            " range (0: one per core; default node.workers, 1)"
        ),
    ] = None,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """An SFU node: hosts rooms; drains on SIGTERM/SIGINT/SIGQUIT (second signal forces exit)."""
    from trackyard.cli import workers as pool
    from trackyard.cli.services import run_sfu

    cfg = _load(config, region=region)
    if port is not None:
        cfg.node.api_port = port
    try:
        if worker is not None:  # one of a supervisor's workers
            index, count = pool.parse_worker(worker)
            cfg = pool.worker_config(cfg, index, count)
            if not pool.die_with_parent():
                typer.echo("trackyard: sfu worker's supervisor is gone; exiting", err=True)
                sys.exit(1)
        else:
            count = cfg.node.workers if workers is None else workers
            count = count or pool.default_workers()
            if count > 1:
                pool.worker_config(cfg, count - 1, count)  # refuse a bad slicing up front
                sys.exit(pool.supervise(pool.own_command(), count))
    except ConfigError as exc:
        typer.echo(f"trackyard: invalid config: {exc}", err=True)
        sys.exit(2)
    sys.exit(_run(run_sfu(cfg)))


@cli.command("generate-keys")
def generate_keys() -> None:
    """Print a new API key and secret (LiveKit's format: APIxxxxxxxxxxxx, 43+ characters)."""
    import secrets

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    key = "API" + "".join(secrets.choice(alphabet) for _ in range(12))
    typer.echo(f"API Key:  {key}")
    typer.echo(f"API Secret:  {secrets.token_urlsafe(32)}")


@cli.command()
def ports(config: ConfigOpt = None) -> None:
    """Print the ports this config uses (as livekit-server ports)."""
    cfg = _load(config)
    typer.echo("TCP Ports")
    typer.echo(f"{cfg.port} - HTTP service (signal, Twirp API)")
    if cfg.prometheus.port:
        typer.echo(f"{cfg.prometheus.port} - Prometheus metrics")
    typer.echo(f"{cfg.node.api_port} - SFU node health API (trackyard sfu)")
    typer.echo(f"{cfg.router.port} - router (trackyard router)")
    typer.echo("UDP Ports")
    typer.echo(f"{cfg.rtc.port_range_start}-{cfg.rtc.port_range_end} - ICE/UDP range")


@cli.command("create-join-token")
def create_join_token(
    room: Annotated[str, typer.Option(help="name of room to join")],
    identity: Annotated[str, typer.Option(help="identity of participant that holds the token")],
    recorder: Annotated[
        bool, typer.Option(help="a hidden participant that can only subscribe")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """A room join token valid 30 days, signed with the first configured key (as LiveKit)."""
    cfg = _load(config)
    api_key, api_secret = next(iter(cfg.keys.items()))
    video: dict[str, object] = {"roomJoin": True, "room": room}
    if recorder:
        video.update(hidden=True, recorder=True, canPublish=False, canPublishData=False)
    token = create_token(
        api_key,
        api_secret,
        identity=identity,
        grants=VideoGrants.model_validate(video),
        ttl=dt.timedelta(days=30),
    )
    typer.echo(f"Token: {token}")


@cli.command("list-nodes")
def list_nodes_command(config: ConfigOpt = None) -> None:
    """List the cluster's SFU nodes (livekit-server list-nodes; same as ``nodes``)."""
    nodes(config)


@cli.command()
def nodes(config: ConfigOpt = None) -> None:
    """List the cluster's SFU nodes with state and load (reads the store)."""
    from trackyard.cli.runtime import list_nodes

    cfg = _load(config, dev=config is None)
    records = asyncio.run(list_nodes(cfg))
    typer.echo(
        f"{'NODE':<16} {'REGION':<10} {'STATE':<14} {'ADDRESS':<22} {'CPU':>5} {'SYSLOAD':>7} "
        f"{'ROOMS':>5} {'CLIENTS':>7} {'TRACKS':>6} {'AGE':>5}  DRAIN DEADLINE"
    )
    now = time.time()
    for r in records:
        s = r.stats
        typer.echo(
            f"{r.id:<16} {r.region or '-':<10} {r.state.value:<14} {r.address or '-':<22} "
            f"{s.cpu_load:>5.2f} {s.sysload:>7.2f} {s.rooms:>5} {s.clients:>7} "
            f"{s.tracks_in + s.tracks_out:>6} {now - s.updated_at:>4.1f}s  "
            f"{describe_deadline(r.model_dump(mode='json'), now)}"
        )


cli.command("drain")(drain_command)
cli.command("load-test")(load_test_command)


@token_app.command("create")
def token_create(
    room: Annotated[str, typer.Option(help="room the token may join")] = "",
    identity: Annotated[str, typer.Option(help="participant identity")] = "",
    name: Annotated[str, typer.Option(help="display name")] = "",
    metadata: Annotated[str, typer.Option(help="participant metadata")] = "",
    grants: Annotated[
        str, typer.Option(help="extra video grants as JSON, e.g. '{\"canPublish\": false}'")
    ] = "",
    join: Annotated[bool, typer.Option(help="grant roomJoin")] = True,
    admin: Annotated[bool, typer.Option(help="grant roomAdmin, roomCreate, roomList")] = False,
    valid_for: Annotated[int, typer.Option(help="seconds the token is valid")] = 6 * 3600,
    api_key: Annotated[str, typer.Option(envvar="LIVEKIT_API_KEY")] = "",
    api_secret: Annotated[str, typer.Option(envvar="LIVEKIT_API_SECRET")] = "",
    config: ConfigOpt = None,
) -> None:
    """Print an access token (signed with the config's first key unless --api-key is given)."""
    if not api_key or not api_secret:
        cfg = _load(config, dev=config is None)
        if api_key:
            secret = cfg.keys.get(api_key)
            if secret is None:
                typer.echo(f"trackyard: unknown API key {api_key!r}", err=True)
                raise typer.Exit(2)
            api_secret = secret
        else:
            api_key, api_secret = next(iter(cfg.keys.items()))
    video: dict[str, object] = {"roomJoin": join, "room": room}
    if admin:
        video.update(roomAdmin=True, roomCreate=True, roomList=True)
    if grants:
        try:
            extra = json.loads(grants)
        except ValueError as exc:
            typer.echo(f"trackyard: --grants is not JSON: {exc}", err=True)
            raise typer.Exit(2) from None
        if not isinstance(extra, dict):
            typer.echo("trackyard: --grants must be a JSON object", err=True)
            raise typer.Exit(2)
        video.update(extra)
    token = create_token(
        api_key,
        api_secret,
        identity=identity,
        name=name,
        metadata=metadata,
        grants=VideoGrants.model_validate(video),
        ttl=dt.timedelta(seconds=valid_for),
    )
    typer.echo(token)


def _split_key_path_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take livekit-server's generated ``--<key.path> value`` flags out of ``argv``."""
    rest: list[str] = []
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=")
        if arg.startswith("--") and ("." in name or (name in FLAG_PATHS and "_" in name)):
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"trackyard: {arg} needs a value")
                value = argv[i + 1]
                i += 1
            found[name] = value
        else:
            rest.append(arg)
        i += 1
    return rest, found


def app() -> None:
    """The ``trackyard`` command (``--<key.path>`` flags taken out before typer parses)."""
    argv, overrides = _split_key_path_flags(sys.argv[1:])
    command = typer.main.get_command(cli)
    command.main(args=argv, prog_name="trackyard", obj={"overrides": overrides})


if __name__ == "__main__":
    app()
