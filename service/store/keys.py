"""The single source of store key names.

Every key carries the ``{prefix}`` hash tag: the admission script touches a token's quota keys
and the cooldowns in one call, so they must live in one Redis Cluster slot.
"""

from __future__ import annotations


class Keys:
    __slots__ = ("channel", "cooldowns", "failures", "prefix", "stats", "tag", "tokens")

    def __init__(self, prefix: str = "best") -> None:
        self.prefix = prefix
        self.tag = "{" + prefix + "}"
        self.tokens = f"{self.tag}:tokens"
        self.cooldowns = f"{self.tag}:cooldowns"
        self.failures = f"{self.tag}:failures"
        self.stats = f"{self.tag}:stats"
        self.channel = f"{self.tag}:tokens-changed"

    def token(self, token_id: str) -> str:
        return f"{self.tag}:token:{token_id}"

    def rpm(self, token_id: str) -> str:
        return f"{self.tag}:rpm:{token_id}"

    def tpm(self, token_id: str) -> str:
        return f"{self.tag}:tpm:{token_id}"

    def tpm_amounts(self, token_id: str) -> str:
        return f"{self.tag}:tpm-amounts:{token_id}"

    def tpm_sum(self, token_id: str) -> str:
        return f"{self.tag}:tpm-sum:{token_id}"

    def concurrency(self, token_id: str) -> str:
        return f"{self.tag}:concurrency:{token_id}"

    def quota_keys(self, token_id: str) -> list[str]:
        """KEYS[1..6] of the admission script, in its order."""
        return [
            self.token(token_id),
            self.rpm(token_id),
            self.tpm(token_id),
            self.tpm_amounts(token_id),
            self.tpm_sum(token_id),
            self.concurrency(token_id),
        ]

    def catalog(self, provider: str) -> str:
        return f"{self.tag}:catalog:{provider}"

    def leaderboard(self, source: str) -> str:
        return f"{self.tag}:leaderboard:{source}"

    def lock(self, name: str) -> str:
        return f"{self.tag}:lock:{name}"


def provider_field(provider: str) -> str:
    """Cooldown / failure-count field of a whole provider."""
    return f"p|{provider}"


def pair_field(provider: str, model: str) -> str:
    """Cooldown / failure-count field of one (provider, model) pair."""
    return f"m|{provider}|{model}"
