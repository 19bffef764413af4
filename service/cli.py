"""The ``best`` command: ``serve``, ``check-config``, ``tokens``, ``teams`` and ``usage``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from service.config import ConfigError, ProviderConfig, load_config
from service.identities.config import load_auth
from service.observability.logging import configure_logging
from service.routing.table import AUTO
from service.settings import Settings, SettingsError, settings_from_env


def _settings() -> Settings:
    try:
        return settings_from_env()
    except SettingsError as exc:
        print(f"best: invalid environment: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_redis_url(settings: Settings) -> None:
    """An unusable REDIS_URL is one line and exit 2, before anything starts."""
    if settings.redis_url is None:
        return
    from service.store.connection import RedisUrlError, parse_redis_url

    try:
        parse_redis_url(settings.redis_url)
    except RedisUrlError as exc:
        print(f"best: invalid environment: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_tracing(settings: Settings) -> None:
    """Unusable OTEL_* variables are one line and exit 2, before anything starts."""
    from service.observability.tracing import TracingError, check_env

    try:
        check_env(settings.env)
    except TracingError as exc:
        print(f"best: invalid environment: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    _check_redis_url(settings)
    _check_tracing(settings)
    configure_logging(settings.log_level)
    try:
        load_config(settings.config_dir)
    except ConfigError as exc:
        print(f"best: invalid configuration: {exc}", file=sys.stderr)
        return 2
    from service.server import ServeError, serve

    try:
        serve(settings)
    except ServeError as exc:
        print(f"best: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: the server already shut down cleanly; uvicorn re-raises the signal after.
        return 130
    return 0


async def _scored_table(
    settings: Settings, offline: bool
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The scored pairs, and why each provider's discovery failed (by provider name)."""
    from service.gateway import Gateway

    gateway = Gateway.build(Settings(**{**settings.__dict__, "redis_url": None}))
    await gateway.client.start()
    try:
        if not offline:
            await gateway.catalog.refresh_now()
        rows = [
            {
                "provider": c.provider,
                "model": c.model,
                "score": round(c.score.total, 3),
                "leaderboard": round(c.score.leaderboard, 3),
                "params_b": c.score.params_b,
                "context": c.score.context,
                "adjustment": c.score.adjustment,
            }
            for c in gateway.catalog.table.pairs
        ]
        await _add_fleet_state(settings, rows)
        return rows, dict(gateway.catalog.discovery_errors)
    finally:
        await gateway.client.close()
        await gateway.store.close()


async def _add_fleet_state(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Each pair's live factor and breaker state, as the fleet sharing ``REDIS_URL`` sees
    them (read only); without a shared store they live in the running gateway: null."""
    for row in rows:
        row.update(live_factor=None, breaker=None, cooling_s=None)
    if settings.redis_url is None:
        return
    import orjson

    from service.observability.metrics import create_metrics
    from service.store.backend import StoreError
    from service.store.keys import pair_field, provider_field
    from service.store.open import open_store

    store = open_store(settings, create_metrics())
    try:
        await store.start()
        if store.degraded:
            return
        state = await store.breaker_state()
        live = orjson.loads(await store.get(store.keys.live) or b"[]")
    except StoreError:
        return
    finally:
        await store.close()
    factors = {(e["provider"], e["model"]): e["factor"] for e in live}
    for row in rows:
        pair = pair_field(row["provider"], row["model"])
        until = max(
            state.cooling.get(pair, 0), state.cooling.get(provider_field(row["provider"]), 0)
        )
        if pair not in state.tripped:
            breaker = "closed"
        else:
            breaker = "open" if state.cooling.get(pair, 0) > state.now_ms else "half_open"
        row.update(
            live_factor=factors.get((row["provider"], row["model"]), 1.0),
            breaker=breaker,
            cooling_s=round(max(0, until - state.now_ms) / 1000, 1),
        )


def _alias_reach(target: str, rows: list[dict[str, Any]]) -> int:
    """How many scored pairs an alias's target reaches (a list: every part's)."""
    reached = set()
    for part in (p.strip() for p in target.split(",")):
        for row in rows:
            pinned = f"{row['provider']}/{row['model']}"
            if part in (row["model"], pinned) or (part == AUTO and row["score"] > 0):
                reached.add(pinned)
    return len(reached)


def _provider_state(
    settings: Settings, provider: ProviderConfig, errors: dict[str, str], offline: bool
) -> str:
    """ "ok" (or "ok: ...") when the provider can serve; otherwise why not."""
    if provider.base_priority <= 0:
        return "disabled (base_priority <= 0)"
    if provider.api_key_env_var is None:
        if offline:
            return "local server, no key (not contacted offline)"
        if provider.name in errors:
            return f"local server, no key: did not answer at {provider.base_url}; skipped"
        return "ok: local server answered"
    if not settings.provider_key(provider.api_key_env_var):
        return f"{provider.api_key_env_var} unset"
    if provider.name in errors:
        return f"discovery failed: {errors[provider.name]}"
    return "ok"


def cmd_check_config(args: argparse.Namespace) -> int:
    """Exit 0 when something is routable, 1 when nothing is, 2 for an invalid config.  With
    ``--json`` stdout holds one JSON document and nothing else."""
    settings = _settings()
    configure_logging("error")
    try:
        config = load_config(settings.config_dir)
        load_auth(settings.config_dir)
    except ConfigError as exc:
        print(f"best: invalid configuration: {exc}", file=sys.stderr)
        return 2
    rows, errors = asyncio.run(_scored_table(settings, args.offline))
    providers = [
        {
            "name": p.name,
            "state": _provider_state(settings, p, errors, args.offline),
            "apis": sorted(p.apis),
        }
        for p in config.providers
    ]
    routable = sum(1 for r in rows if r["score"] > 0)
    # Offline, discovered providers have no models yet: only a missing key is conclusive.
    keyed = any(str(p["state"]).startswith("ok") for p in providers)
    failed = routable == 0 and (not args.offline or not keyed)
    aliases = [
        {"pattern": pattern, "target": target, "pairs": _alias_reach(target, rows)}
        for pattern, target in config.model_aliases.rules
    ]
    if args.json:
        document = {
            "warnings": list(config.warnings),
            "providers": providers,
            "pairs": rows,
            "routable": routable,
            "aliases": aliases,
        }
        print(json.dumps(document, indent=2))
        return 1 if failed else 0
    for warning in config.warnings:
        print(f"warning: {warning}")
    for p in providers:
        print(f"provider {p['name']:<14} {p['state']}  (apis: {', '.join(p['apis'])})")
    print(
        f"\n{'score':>9}  {'provider':<14} {'model':<48} {'lb':>5} {'params':>7} {'context':>8} "
        f"{'adj':>5} {'live':>5}  breaker"
    )
    for r in rows:
        live = "-" if r["live_factor"] is None else f"{r['live_factor']:.2f}"
        breaker = r["breaker"] or "-"
        if r["cooling_s"]:
            breaker += f" ({r['cooling_s']:g}s)"
        print(
            f"{r['score']:>9.2f}  {r['provider']:<14} {r['model']:<48} {r['leaderboard']:>5.2f} "
            f"{r['params_b']:>7g} {r['context']:>8} {r['adjustment']:>5g} {live:>5}  {breaker}"
        )
    if settings.redis_url is None:
        print("live and breaker: the fleet's state is in the running gateway (no REDIS_URL)")
    if aliases:
        print("\naliases (aliases.yaml; first match wins, for names no provider serves):")
        for alias in aliases:
            print(f"  {alias['pattern']:<24} -> {alias['target']}  ({alias['pairs']} pairs)")
    print(f"\n{routable} routable of {len(rows)} scored pairs")
    if failed:
        print("best: nothing is routable", file=sys.stderr)
    return 1 if failed else 0


def _admin_call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    token = args.admin_token or next(
        (t.strip() for t in os.environ.get("ADMIN_TOKENS", "").split(",") if t.strip()), None
    )
    if not token:
        raise SystemExit(f"best {args.command}: pass --admin-token or set ADMIN_TOKENS")
    url = args.url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        raise SystemExit(f"best {args.command}: {method} {url} -> {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"best {args.command}: cannot reach {url}: {exc.reason}") from None


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The body of a create or update: the options given; 0 or "none" clears a limit."""
    body: dict[str, Any] = {}
    for name in ("rpm", "tpm", "max_concurrency", "expires_at", "name", "team"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = None if value in (0, "none") else value
    for name in ("budget_usd", "budget_period"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = None if value == "none" else value
    if isinstance(body.get("budget_usd"), str):
        body["budget_usd"] = _usd(body["budget_usd"])
    ttl = getattr(args, "cache_ttl_s", None)
    if ttl is not None:  # 0 is a value here (no cache), "none" clears it
        body["cache_ttl_s"] = None if ttl == "none" else _seconds(ttl)
    return body


def _seconds(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"best: --cache-ttl-s {text!r} is not whole seconds (or none)") from None


def _usd(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f"best: --budget-usd {text!r} is not a number (or none)") from None


def cmd_tokens(args: argparse.Namespace) -> int:
    if args.action == "create":
        result = _admin_call(args, "POST", "/admin/tokens", _limits(args))
    elif args.action == "list":
        result = _admin_call(args, "GET", "/admin/tokens")
    elif args.action == "update":
        result = _admin_call(args, "PATCH", f"/admin/tokens/{args.id}", _limits(args))
    else:
        result = _admin_call(args, "DELETE", f"/admin/tokens/{args.id}")
    print(json.dumps(result, indent=2))
    return 0


def cmd_teams(args: argparse.Namespace) -> int:
    if args.action == "create":
        body = _limits(args)
        if args.new_id is not None:
            body["id"] = args.new_id
        result = _admin_call(args, "POST", "/admin/teams", body)
    elif args.action == "list":
        result = _admin_call(args, "GET", "/admin/teams")
    elif args.action == "show":
        result = _admin_call(args, "GET", f"/admin/teams/{args.team_id}")
    elif args.action == "update":
        result = _admin_call(args, "PATCH", f"/admin/teams/{args.team_id}", _limits(args))
    else:
        result = _admin_call(args, "DELETE", f"/admin/teams/{args.team_id}")
    print(json.dumps(result, indent=2))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode(
        {
            k: v
            for k, v in (("group_by", args.group_by), ("from", args.start), ("to", args.end))
            if v
        }
    )
    result = _admin_call(args, "GET", f"/admin/usage?{query}")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = result["data"]
    key = args.group_by
    width = max(
        [len(key), 6, *(len(str(r[key] or "-")) + len(r.get("name") or "") + 1 for r in rows)]
    )
    print(
        f"{key:<{width}}  {'requests':>9}  {'prompt':>12}  {'completion':>12}  "
        f"{'cost_usd':>14}  {'unpriced':>8}  {'cached':>8}"
    )
    totals = [0, 0, 0, 0.0, 0, 0]
    for r in rows:
        values = (
            r["requests"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["cost_usd"],
            r["unpriced_requests"],
            r.get("cached_requests", 0),
        )
        for i, value in enumerate(values):
            totals[i] += value
        label = str(r[key] or "-")
        if r.get("name"):  # group_by token: whose it is (an identity: <issuer>:<claim>)
            label = f"{label} {r['name']}"
        print(_usage_line(label, width, values))
    print(_usage_line("total", width, tuple(totals)))
    return 0


def _usage_line(name: str, width: int, values: tuple[Any, ...]) -> str:
    requests, prompt, completion, cost, unpriced, cached = values
    return (
        f"{name:<{width}}  {requests:>9}  {prompt:>12}  {completion:>12}  "
        f"{cost:>14.6f}  {unpriced:>8}  {cached:>8}"
    )


def _admin_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument(
        "--url",
        default=f"http://127.0.0.1:{os.environ.get('PORT') or 12345}",
        help="the gateway's base URL",
    )
    parser.add_argument("--admin-token", help="an ADMIN_TOKENS bearer (default: $ADMIN_TOKENS)")
    return parser


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=int, help="requests per minute (0: none)")
    parser.add_argument("--tpm", type=int, help="tokens per minute (0: none)")
    parser.add_argument("--max-concurrency", dest="max_concurrency", type=int)
    parser.add_argument("--budget-usd", dest="budget_usd", help="spend budget in USD (none: clear)")
    parser.add_argument(
        "--budget-period",
        dest="budget_period",
        choices=["day", "week", "month", "total", "none"],
        help="UTC calendar period of the budget; total never resets",
    )
    parser.add_argument(
        "--cache-ttl-s",
        dest="cache_ttl_s",
        help="serve identical requests from the response cache for this many seconds "
        "(0: no cache; none: not set, a token follows its team)",
    )


SERVE_EPILOG = """\
environment (docs/configuration.md lists every variable):
  PORT, HOST                  where to listen (default 127.0.0.1:12345)
  CONFIG_DIR                  folder of meta-providers.yaml and friends (default config)
  <provider>_API_KEY          each provider's key, named by api_key_env_var in the config
  AUTH_TOKENS, ADMIN_TOKENS   client and admin bearer tokens
  REDIS_URL                   shared store of a fleet (unset: embedded, one replica)
  WEB_CONCURRENCY             worker processes (needs REDIS_URL)
  REQUEST_TIMEOUT_S, REQUEST_READ_TIMEOUT_S, SHUTDOWN_GRACE_S, MAX_BODY_BYTES, LOG_LEVEL
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="best", description="BEST LLM gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. It takes no options: it is configured by environment\n"
        "variables (over a .env file in the working directory) and the YAML files of CONFIG_DIR.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).set_defaults(func=cmd_serve)
    check = sub.add_parser("check-config", help="validate config/ and print the scored models")
    check.add_argument(
        "--offline",
        action="store_true",
        help="skip model discovery and leaderboards: fixed model lists only",
    )
    check.add_argument(
        "--json", action="store_true", help="print one JSON document (and nothing else)"
    )
    check.set_defaults(func=cmd_check_config)

    tokens = _admin_parser(sub, "tokens", "manage tokens through a running gateway")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create")
    create.add_argument("--name", required=True)
    actions.add_parser("list")
    update = actions.add_parser("update")
    update.add_argument("id")
    update.add_argument("--name")
    revoke = actions.add_parser("revoke")
    revoke.add_argument("id")
    for p in (create, update):
        _limit_options(p)
        p.add_argument("--expires-at", dest="expires_at")
        p.add_argument("--team", help="the team's id (none: no team)")
    tokens.set_defaults(func=cmd_tokens)

    teams = _admin_parser(sub, "teams", "manage teams through a running gateway")
    team_actions = teams.add_subparsers(dest="action", required=True)
    team_create = team_actions.add_parser("create")
    team_create.add_argument("--name", required=True)
    team_create.add_argument("--id", dest="new_id", help="the team's id (default: generated)")
    team_actions.add_parser("list")
    for action in ("show", "update", "delete"):
        parser_ = team_actions.add_parser(action)
        parser_.add_argument("team_id")
        if action == "update":
            parser_.add_argument("--name")
            _limit_options(parser_)
    _limit_options(team_create)
    teams.set_defaults(func=cmd_teams)

    usage = _admin_parser(sub, "usage", "spend and tokens from the usage ledger")
    usage.add_argument(
        "--group-by",
        dest="group_by",
        default="team",
        choices=["team", "token", "provider", "model", "day"],
    )
    usage.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD (default: 1st)")
    usage.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD (default: today)")
    usage.add_argument("--json", action="store_true", help="print the API's JSON document")
    usage.set_defaults(func=cmd_usage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
