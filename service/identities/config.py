"""``auth.yaml`` of ``CONFIG_DIR``: the issuers whose bearer tokens (JWTs) are identities.

The file is optional: without it (or with no ``jwt:`` entries) the gateway knows only its
static and managed tokens.  Loading validates it with pydantic, like the other files, and
raises ``ConfigError`` listing every problem as ``FILE:LINE: key: what``; a ``jwks_file`` and a
``jwks_ca_file`` are read here, at load, never per request.  What loading returns is frozen
dataclasses.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from service.config import ConfigError
from service.config_schema import (
    HttpUrl,
    Section,
    Text,
    YamlSyntaxError,
    read_yaml,
)
from service.quotas.limits import PERIODS
from service.validation import problems

AUTH_FILE = "auth.yaml"
DEFAULT_ALGORITHMS = ("RS256", "ES256")
# The asymmetric algorithms a JWKS key may verify.  ``none`` and the HMAC family (HS*) are
# never accepted: an HS* token "signed" with a public key is the classic key-confusion forgery.
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
MAX_LIMIT = 10**9


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _scalar_text(value: Any) -> Any:
    """A required claim's value(s) as text: YAML reads ``true`` or ``3`` as non-strings."""
    values = value if isinstance(value, list) else [value]
    return [
        str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v
        for v in values
    ]


LimitValue = Annotated[int, Field(strict=True, ge=0, le=MAX_LIMIT)]


class LimitsEntry(Section):
    """Every identity of the issuer starts with these (0 or absent: unlimited)."""

    rpm: LimitValue | None = None
    tpm: LimitValue | None = None
    max_concurrency: LimitValue | None = None
    budget_usd: Annotated[float, Field(strict=True, ge=0, le=1_000_000_000)] | None = None
    budget_period: str | None = None

    @model_validator(mode="after")
    def _period(self) -> LimitsEntry:
        if self.budget_period is not None and self.budget_period not in PERIODS:
            raise ValueError(f"budget_period must be one of {', '.join(PERIODS)}")
        if (self.budget_usd is None) != (self.budget_period is None):
            raise ValueError("budget_usd and budget_period go together")
        return self


class IssuerEntry(Section):
    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    issuer: Text
    audiences: Annotated[list[Text], BeforeValidator(_as_list), Field(min_length=1)]
    jwks_url: HttpUrl | None = None
    jwks_file: Text | None = None
    jwks_ca_file: Text | None = None
    jwks_token_file: Text | None = None
    algorithms: Annotated[list[str], BeforeValidator(_as_list), Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS)
    )
    leeway_s: Annotated[float, Field(strict=True, ge=0, le=600)] = 30.0
    id_claim: Text = "sub"
    team_claim: Text | None = None
    required_claims: dict[
        str, Annotated[list[str], BeforeValidator(_scalar_text), Field(min_length=1)]
    ] = Field(default_factory=dict)
    limits: LimitsEntry = LimitsEntry()

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(
                    f"{alg} is never accepted: a JWKS holds public keys, and only asymmetric "
                    f"algorithms verify with them ({', '.join(ALGORITHMS)})"
                )
            if alg not in ALGORITHMS:
                raise ValueError(f"unknown algorithm {alg!r}; known: {', '.join(ALGORITHMS)}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> IssuerEntry:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url (http(s)) or jwks_file (a path)")
        if self.jwks_file is not None and (self.jwks_ca_file or self.jwks_token_file):
            raise ValueError("jwks_ca_file and jwks_token_file go with jwks_url")
        return self


class AuthFile(Section):
    jwt: list[IssuerEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class IssuerLimits:
    rpm: int = 0
    tpm: int = 0
    max_concurrency: int = 0
    budget_usd: float | None = None
    budget_period: str | None = None

    def fields(self) -> dict[str, str]:
        """As a token record stores them."""
        return {
            "rpm": str(self.rpm) if self.rpm else "",
            "tpm": str(self.tpm) if self.tpm else "",
            "max_concurrency": str(self.max_concurrency) if self.max_concurrency else "",
            "budget_usd": repr(self.budget_usd) if self.budget_usd is not None else "",
            "budget_period": self.budget_period or "",
        }


@dataclass(frozen=True)
class JwksSource:
    """Where an issuer's keys come from; equal sources share one cache across reloads."""

    url: str | None = None
    ca_file: str | None = None
    token_file: str | None = None  # its content is sent as a bearer token (re-read per fetch)
    keys: tuple[dict[str, Any], ...] = ()  # the JWKs of a jwks_file


@dataclass(frozen=True)
class Issuer:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    source: JwksSource
    algorithms: frozenset[str]
    leeway_s: float
    id_claim: tuple[str, ...]  # a claim's path: "kubernetes.io/namespace" is two steps
    team_claim: tuple[str, ...] | None
    required_claims: tuple[tuple[tuple[str, ...], frozenset[str]], ...]
    limits: IssuerLimits
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AuthConfig:
    issuers: tuple[Issuer, ...] = ()
    fingerprint: str = ""

    def by_issuer(self) -> dict[str, Issuer]:
        return {i.issuer: i for i in self.issuers}


def claim_path(name: str) -> tuple[str, ...]:
    """A claim's name as a path into nested objects; ``/`` separates the steps."""
    return tuple(name.split("/"))


def _place(path: Path, line: int) -> str:
    return f"{path}:{line}" if line else str(path)


def load_auth(config_dir: Path) -> AuthConfig:
    """The issuers of ``config_dir/auth.yaml`` (none when the file is absent)."""
    path = config_dir / AUTH_FILE
    fingerprint = auth_fingerprint(config_dir)
    if not path.is_file():
        return AuthConfig((), fingerprint)
    try:
        document = read_yaml(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except YamlSyntaxError as exc:
        raise ConfigError(f"{_place(path, exc.line)}: invalid YAML: {exc.problem}") from None
    try:
        parsed = AuthFile.model_validate({} if document.data is None else document.data)
    except ValidationError as exc:
        found = sorted(((document.line_of(p.loc), p) for p in problems(exc)), key=lambda x: x[0])
        raise ConfigError(
            "; ".join(f"{_place(path, line)}: {p.where}: {p.text}" for line, p in found)
        ) from None
    errors: list[str] = []
    issuers: list[Issuer] = []
    seen_names: set[str] = set()
    seen_issuers: set[str] = set()
    for index, entry in enumerate(parsed.jwt):
        where = f"{_place(path, document.line_of(('jwt', index)))}: jwt[{index}]"
        if entry.name in seen_names:
            errors.append(f"{where}: duplicate issuer name {entry.name!r}")
        if entry.issuer in seen_issuers:
            errors.append(f"{where}: issuer {entry.issuer!r} is listed twice")
        seen_names.add(entry.name)
        seen_issuers.add(entry.issuer)
        try:
            issuers.append(_issuer(entry, config_dir))
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
    if errors:
        raise ConfigError("; ".join(errors))
    return AuthConfig(tuple(issuers), fingerprint)


def _issuer(entry: IssuerEntry, config_dir: Path) -> Issuer:
    context = None
    if entry.jwks_file is not None:
        source = JwksSource(keys=_jwks_file(config_dir / entry.jwks_file))
    else:
        source = JwksSource(entry.jwks_url, entry.jwks_ca_file, entry.jwks_token_file)
        if entry.jwks_ca_file is not None:
            try:
                context = ssl.create_default_context(cafile=str(config_dir / entry.jwks_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"jwks_ca_file {entry.jwks_ca_file}: {exc}") from None
    limits = entry.limits
    return Issuer(
        name=entry.name,
        issuer=entry.issuer,
        audiences=tuple(entry.audiences),
        source=source,
        algorithms=frozenset(entry.algorithms),
        leeway_s=entry.leeway_s,
        id_claim=claim_path(entry.id_claim),
        team_claim=claim_path(entry.team_claim) if entry.team_claim else None,
        required_claims=tuple(
            (claim_path(name), frozenset(values)) for name, values in entry.required_claims.items()
        ),
        limits=IssuerLimits(
            limits.rpm or 0,
            limits.tpm or 0,
            limits.max_concurrency or 0,
            limits.budget_usd,
            limits.budget_period,
        ),
        ssl_context=context,
    )


def _jwks_file(path: Path) -> tuple[dict[str, Any], ...]:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"jwks_file {path}: cannot be read: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"jwks_file {path}: not JSON: {exc}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys) or not keys:
        raise ValueError(f"jwks_file {path}: not a JWK Set (an object with a list of keys)")
    return tuple(keys)


def auth_fingerprint(config_dir: Path) -> str:
    """A digest of auth.yaml and of the files it names (a changed key file reloads too)."""
    digest = hashlib.sha256()
    path = config_dir / AUTH_FILE
    try:
        text = path.read_bytes()
    except OSError:
        return "<absent>"
    digest.update(text)
    try:
        data = read_yaml(path).data
    except (OSError, YamlSyntaxError):
        return digest.hexdigest()
    entries = data.get("jwt") if isinstance(data, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        for key in ("jwks_file", "jwks_ca_file"):
            name = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(name, str):
                try:
                    digest.update((config_dir / name).read_bytes())
                except OSError:
                    digest.update(b"<absent>")
    return digest.hexdigest()
