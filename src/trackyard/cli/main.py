"""The ``trackyard`` command."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from trackyard.core.auth import VideoGrants, create_token
from trackyard.core.config import Config, ConfigError
from trackyard.core.logging import setup_logging

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Trackyard: a LiveKit-compatible SFU"
)
token_app = typer.Typer(no_args_is_help=True, help="Access tokens")
app.add_typer(token_app, name="token")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML config file (LiveKit key names)")
]


def _load(
    config: Path | None,
    *,
    dev: bool = False,
    port: int | None = None,
    bind: list[str] | None = None,
    region: str | None = None,
) -> Config:
    try:
        cfg = Config.load(config, dev=dev)
        if port is not None:
            cfg.port = port
        if bind:
            cfg.bind_addresses = bind
        if region is not None:
            cfg.region = region
    except ConfigError as exc:
        typer.echo(f"trackyard: {exc}", err=True)
        raise typer.Exit(2) from None
    # dev mode logs for people (console) unless the config asks for JSON explicitly
    explicit_json = "json_format" in cfg.logging.model_fields_set
    setup_logging(
        cfg.logging.level,
        json=cfg.logging.json_format if explicit_json else not cfg.development,
    )
    return cfg


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run a service; configuration refused at start-up is a one-line error, exit status 2."""
    from trackyard.router.selector import SelectorError

    try:
        return asyncio.run(main)
    except (ConfigError, SelectorError) as exc:
        typer.echo(f"trackyard: invalid config: {exc}", err=True)
        return 2


@app.command()
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


@app.command()
def signal(config: ConfigOpt = None, port: PortOpt = None, region: RegionOpt = None) -> None:
    """The signal edge: client WebSockets and RoomService, bridged to SFU nodes via Redis."""
    from trackyard.cli.services import run_signal

    cfg = _load(config, port=port, region=region)
    sys.exit(_run(run_signal(cfg)))


@app.command()
def router(config: ConfigOpt = None, port: PortOpt = None, region: RegionOpt = None) -> None:
    """The router: runs the node selector and places rooms atomically."""
    from trackyard.cli.services import run_router

    cfg = _load(config, region=region)
    if port is not None:
        cfg.router.port = port
    sys.exit(_run(run_router(cfg)))


@app.command()
def sfu(config: ConfigOpt = None, port: PortOpt = None, region: RegionOpt = None) -> None:
    """An SFU node: hosts rooms; drains on SIGTERM/SIGINT/SIGQUIT (second signal forces exit)."""
    from trackyard.cli.services import run_sfu

    cfg = _load(config, region=region)
    if port is not None:
        cfg.node.api_port = port
    sys.exit(_run(run_sfu(cfg)))


@app.command()
def nodes(config: ConfigOpt = None) -> None:
    """List the cluster's SFU nodes with state and load (reads the store)."""
    from trackyard.cli.runtime import list_nodes

    cfg = _load(config, dev=config is None)
    records = asyncio.run(list_nodes(cfg))
    typer.echo(
        f"{'NODE':<16} {'REGION':<10} {'STATE':<14} {'ADDRESS':<22} {'CPU':>5} {'SYSLOAD':>7} "
        f"{'ROOMS':>5} {'CLIENTS':>7} {'TRACKS':>6} {'AGE':>5}"
    )
    now = time.time()
    for r in records:
        s = r.stats
        typer.echo(
            f"{r.id:<16} {r.region or '-':<10} {r.state.value:<14} {r.address or '-':<22} "
            f"{s.cpu_load:>5.2f} {s.sysload:>7.2f} {s.rooms:>5} {s.clients:>7} "
            f"{s.tracks_in + s.tracks_out:>6} {now - s.updated_at:>4.1f}s"
        )


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


if __name__ == "__main__":
    app()
