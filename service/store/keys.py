"""The single source of store key names, and the hash tags that place them on Cluster slots.

- Quota state (rate windows, in-flight leases, budget spend) belongs to an *owner group*: a
  token without a team, or a team and all its tokens.  The group's keys share the tag
  ``{q:<group>}``, so one admission script can check a token and its team atomically, and
  different groups spread over a Cluster's shards.
- The registry (tokens, teams, their version counter) shares ``{registry}``: it is small,
  changes rarely, and a re-seed writes it in one transaction.
- Fleet-wide routing state (cooldowns, breakers, probes, failure counts, live factors) shares
  ``{routing}``; statistics, catalog caches, locks, response affinity, each day of the usage
  ledger and each cached answer live under tags of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QuotaKeys:
    """KEYS of one admission: the token's windows, leases and budget, then its team's (if
    any).  Windows and leases are ephemeral; a budget holds the period's spend (durable)."""

    token_windows: str
    token_leases: str
    token_budget: str
    team_windows: str | None = None
    team_leases: str | None = None
    team_budget: str | None = None

    def as_list(self) -> list[str]:
        keys = [self.token_windows, self.token_leases, self.token_budget]
        if self.team_windows is not None and self.team_leases is not None and self.team_budget:
            keys += [self.team_windows, self.team_leases, self.team_budget]
        return keys


_QUOTA_KEYS_MAX = 100_000  # owners whose quota keys are remembered (about 1 KiB each)


class Keys:
    __slots__ = (
        "_quota_keys",
        "breakers",
        "channel",
        "cooldowns",
        "failures",
        "live",
        "prefix",
        "probes",
        "stats",
        "teams",
        "tokens",
        "version",
    )

    def __init__(self, prefix: str = "best") -> None:
        self.prefix = prefix
        self._quota_keys: dict[tuple[str, str | None], QuotaKeys] = {}
        registry = f"{prefix}:{{registry}}"
        self.tokens = f"{registry}:tokens"
        self.teams = f"{registry}:teams"
        self.version = f"{registry}:version"
        routing = f"{prefix}:{{routing}}"
        self.cooldowns = f"{routing}:cooldowns"
        self.failures = f"{routing}:failures"
        self.breakers = f"{routing}:breakers"
        self.probes = f"{routing}:probes"
        self.live = f"{routing}:live"
        self.stats = f"{prefix}:{{stats}}:counters"
        self.channel = f"{prefix}:events"

    # -- registry ----------------------------------------------------------------------------

    def record(self, kind: str, record_id: str) -> str:
        """A token's or a team's record (hash); ``kind`` is "token" or "team"."""
        return f"{self.prefix}:{{registry}}:{kind}:{record_id}"

    def index(self, kind: str) -> str:
        return self.tokens if kind == "token" else self.teams

    # -- quotas ------------------------------------------------------------------------------

    def quota(self, token_id: str, team_id: str | None) -> QuotaKeys:
        """The quota keys of a token (and its team), built once per pair."""
        found = self._quota_keys.get((token_id, team_id))
        if found is None:
            found = self._quota(token_id, team_id)
            if len(self._quota_keys) < _QUOTA_KEYS_MAX:
                self._quota_keys[(token_id, team_id)] = found
        return found

    def _quota(self, token_id: str, team_id: str | None) -> QuotaKeys:
        # The suffix names the layout of the windows hash (":ring60": lua/quota.lua): a new
        # layout takes a new suffix, so during a rolling upgrade replicas of two layouts count
        # in two keys and never misread each other's buckets (docs/operations/redis.md).
        group = f"{self.prefix}:{{q:{team_id or token_id}}}"
        token = f"{group}:token:{token_id}"
        if team_id is None:
            return QuotaKeys(f"{token}:ring60", f"{token}:leases", f"{token}:budget")
        team = f"{group}:team"
        return QuotaKeys(
            f"{token}:ring60",
            f"{token}:leases",
            f"{token}:budget",
            f"{team}:ring60",
            f"{team}:leases",
            f"{team}:budget",
        )

    # -- caches and locks --------------------------------------------------------------------

    def catalog(self, provider: str) -> str:
        return f"{self.prefix}:{{catalog}}:{provider}"

    def leaderboard(self, source: str) -> str:
        return f"{self.prefix}:{{leaderboard}}:{source}"

    def ledger(self, day: str) -> str:
        """One UTC day of the usage ledger (hash); days spread over a Cluster's shards."""
        return f"{self.prefix}:{{ledger:{day}}}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:{{lock:{name}}}"

    # -- response cache ----------------------------------------------------------------------

    def cached_answer(self, digest: str) -> str:
        """A cached answer, named by the hash of its request (never the prompt); a tag per
        entry spreads the cache over a Cluster's shards."""
        return f"{self.prefix}:{{cache:{digest}}}"

    # -- response affinity -------------------------------------------------------------------

    def response(self, response_id: str) -> str:
        """Which provider holds a Responses API answer; a tag per id spreads them over a
        Cluster's shards (each is read and written alone)."""
        return f"{self.prefix}:{{resp:{response_id}}}"


def provider_field(provider: str) -> str:
    """Cooldown / failure-count field of a whole provider."""
    return f"p|{provider}"


def pair_field(provider: str, model: str) -> str:
    """Cooldown / failure-count field of one (provider, model) pair."""
    return f"m|{provider}|{model}"
