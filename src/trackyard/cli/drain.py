"""``trackyard drain NODE_ID``: the drain API from the command line (and a k8s preStop hook).

It calls a signal edge's ``POST /admin/nodes/{id}/drain`` with a cluster admin token signed
locally (``--api-key``/``--api-secret``, ``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET``, or the
config's first key), so it works from anywhere the edge is reachable.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from trackyard.core.auth import VideoGrants, create_token

HTTP_TIMEOUT = 15.0  # the edge waits up to the node RPC timeout


def http_base(url: str) -> str:
    """``ws://h:p`` / ``wss://`` / bare ``h:p`` -> the edge's HTTP base URL."""
    url = url.strip().rstrip("/")
    if url.startswith("ws://"):
        return "http://" + url[5:]
    if url.startswith("wss://"):
        return "https://" + url[6:]
    if "://" not in url:
        return "http://" + url
    return url


def admin_token(api_key: str, api_secret: str, ttl: float = 300) -> str:
    return create_token(
        api_key,
        api_secret,
        identity="trackyard-cli",
        grants=VideoGrants(room_admin=True, room_list=True),
        ttl=dt.timedelta(seconds=ttl),
    )


def resolve(
    url: str, api_key: str, api_secret: str, config: Path | None
) -> tuple[str, str, str, Any]:
    """Fill what was not given from the config (port, first key); returns (url, key, secret,
    config or None)."""
    cfg = None
    if not url or not api_key or not api_secret:
        from trackyard.cli.main import _load

        cfg = _load(config, dev=config is None)
        if not url:
            url = f"http://127.0.0.1:{cfg.port}"
        if not api_key:
            api_key, api_secret = next(iter(cfg.keys.items()))
        elif not api_secret:
            secret = cfg.keys.get(api_key)
            if secret is None:
                typer.echo(f"trackyard: unknown API key {api_key!r} (give --api-secret)", err=True)
                raise typer.Exit(2)
            api_secret = secret
    return http_base(url), api_key, api_secret, cfg


def describe_deadline(record: dict[str, Any], now: float | None = None) -> str:
    at = record.get("drain_deadline_at")
    if record.get("state") != "SHUTTING_DOWN":
        return "-"
    if not at:
        return "none (exits when empty)"
    left = float(at) - (time.time() if now is None else now)
    return f"in {max(left, 0):.0f}s"


def drain_command(
    node_id: Annotated[
        str, typer.Argument(help="the node's id (ND_...), see `trackyard nodes`")
    ] = "",
    deadline: Annotated[
        float | None,
        typer.Option(
            help="seconds after which participants still there are moved to other nodes "
            "(0 = wait for the last one); default: the node's node.drain_deadline",
            min=0,
        ),
    ] = None,
    self_: Annotated[
        bool,
        typer.Option(
            "--self",
            help="drain the SFU node running on this host (asks its node.api_port for its id); "
            "for a k8s preStop hook",
        ),
    ] = False,
    url: Annotated[
        str, typer.Option(envvar="LIVEKIT_URL", help="a signal edge (default: this config's port)")
    ] = "",
    api_key: Annotated[str, typer.Option(envvar="LIVEKIT_API_KEY")] = "",
    api_secret: Annotated[str, typer.Option(envvar="LIVEKIT_API_SECRET")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print the node record as JSON")] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML config file (LiveKit key names)")
    ] = None,
) -> None:
    """Drain an SFU node, exactly as SIGTERM does: SHUTTING_DOWN at once, no new rooms, exit
    when its last participant left (or move them at --deadline)."""
    base, key, secret, cfg = resolve(url, api_key, api_secret, config)
    if self_:
        if node_id:
            typer.echo("trackyard: give NODE_ID or --self, not both", err=True)
            raise typer.Exit(2)
        if cfg is None:
            from trackyard.cli.main import _load

            cfg = _load(config, dev=config is None)
        node_id = _local_node_id(cfg.node.api_port)
    if not node_id:
        typer.echo(
            "trackyard: which node? give NODE_ID (see `trackyard nodes`) or --self", err=True
        )
        raise typer.Exit(2)
    body = {} if deadline is None else {"deadline": deadline}
    try:
        resp = httpx.post(
            f"{base}/admin/nodes/{node_id}/drain",
            json=body,
            headers={"Authorization": f"Bearer {admin_token(key, secret)}"},
            timeout=HTTP_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"trackyard: cannot reach the signal edge at {base}: {exc}", err=True)
        raise typer.Exit(1) from None
    if resp.status_code != 200:
        try:
            msg = resp.json().get("msg") or resp.text
        except ValueError:
            msg = resp.text
        typer.echo(f"trackyard: drain refused ({resp.status_code}): {msg}", err=True)
        raise typer.Exit(1)
    record = resp.json()
    if as_json:
        typer.echo(json.dumps(record))
        return
    typer.echo(
        f"{record['id']}: {record['state']}, deadline {describe_deadline(record)}, "
        f"{record['stats']['rooms']} rooms, {record['stats']['clients']} clients"
    )


def _local_node_id(api_port: int) -> str:
    try:
        resp = httpx.get(f"http://127.0.0.1:{api_port}/node", timeout=5)
        resp.raise_for_status()
        return str(resp.json()["id"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        typer.echo(
            f"trackyard: --self: no SFU node answers on 127.0.0.1:{api_port}/node: {exc}", err=True
        )
        raise typer.Exit(1) from None
