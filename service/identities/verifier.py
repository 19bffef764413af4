"""Verifying one JWT of a configured issuer with PyJWT: the algorithm allowlist, a JWKS key of
the token's ``kid`` whose type fits the algorithm, the signature, ``exp``/``nbf``/``iat`` with
leeway, ``aud``, ``iss``, and the issuer's required claims.

PyJWT's exceptions become ``Unauthorized`` here and nowhere else, each with a ``code`` naming
the cause.  No message carries the token or a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from service.errors import Unauthorized
from service.identities.config import Issuer
from service.identities.jwks import KeySet

# The key type (and EC curve) each algorithm verifies with.
_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    **{f"{family}{bits}": ("RSA", None) for family in ("RS", "PS") for bits in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_OPTIONS: Any = {"require": ["exp", "iss", "aud"]}
_UNVERIFIED: Any = {"verify_signature": False}


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verified token says: who, which team (the claim's value), until when."""

    issuer: Issuer
    subject: str  # the id claim's value
    team: str | None  # the team claim's value, if the issuer has one and the token carries it
    expires: float  # the token's exp (Unix seconds)


def refused(issuer: Issuer, code: str, why: str) -> Unauthorized:
    return Unauthorized(f"The bearer token of issuer {issuer.name!r} is refused: {why}.", code=code)


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a JWT claims (not verified), or None when ``token`` is not a JWT."""
    try:
        claims = jwt.decode(token, options=_UNVERIFIED)
    except jwt.PyJWTError:
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a header, claims and a signature."""
    return token.count(".") == 2 and token[:2] == "ey"


def claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested objects (None when a step is missing)."""
    value: Any = claims
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


class Verifier:
    """Verifies the tokens of one issuer against its key set; ``verifications`` counts the
    signature checks made."""

    def __init__(self, issuer: Issuer, keys: KeySet) -> None:
        self.issuer = issuer
        self.keys = keys
        self._audiences = list(issuer.audiences)
        # (kid, alg) -> the JWK and the key PyJWT verifies with, prepared once
        self._jwks: dict[tuple[str, str], tuple[dict[str, Any], jwt.PyJWK]] = {}
        self.verifications = 0

    async def verify(self, token: str) -> Verified:
        """The token's identity; raises Unauthorized with the cause's code."""
        issuer = self.issuer
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise refused(issuer, "invalid_signature", "its header cannot be read") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            allowed = ", ".join(sorted(issuer.algorithms))
            raise refused(issuer, "invalid_algorithm", f"alg {str(alg)[:16]!r} is not {allowed}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise refused(issuer, "unknown_key", "its kid is not a string")
        jwk = await (self.keys.key(kid) if kid is not None else self.keys.only_key())
        if jwk is None:
            raise refused(issuer, "unknown_key", "no key of the issuer's JWKS has its kid")
        key = self._prepared(kid or "", alg, jwk)
        self.verifications += 1
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._audiences,
                issuer=issuer.issuer,
                leeway=issuer.leeway_s,
                options=_OPTIONS,
            )
        except jwt.PyJWTError as exc:
            raise _mapped(issuer, exc) from None
        return Verified(issuer, self._subject(claims), self._team(claims), float(claims["exp"]))

    def _prepared(self, kid: str, alg: str, jwk: dict[str, Any]) -> jwt.PyJWK:
        """The key as PyJWT verifies with it, bound to ``alg``: the key's type and curve must
        be the algorithm's, and a key that names its own ``alg`` must name this one."""
        held = self._jwks.get((kid, alg))
        if held is not None and held[0] is jwk:
            return held[1]
        kty, curve = _KEY_TYPES[alg]
        declared = jwk.get("alg")
        if (
            jwk.get("kty") != kty
            or (curve and jwk.get("crv") != curve)
            or declared not in (None, alg)
        ):
            raise refused(self.issuer, "invalid_algorithm", f"alg {alg} does not fit its key")
        try:
            prepared = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            raise refused(self.issuer, "unknown_key", "its key in the JWKS is unusable") from None
        if len(self._jwks) > 64:  # keys rotate: drop the retired ones now and then
            self._jwks.clear()
        self._jwks[(kid, alg)] = (jwk, prepared)
        return prepared

    def _subject(self, claims: dict[str, Any]) -> str:
        issuer = self.issuer
        name = "/".join(issuer.id_claim)
        for path, allowed in issuer.required_claims:
            value = claim(claims, path)
            if value is None:
                raise refused(issuer, "missing_claim", f"claim {'/'.join(path)!r} is missing")
            values = value if isinstance(value, list) else [value]
            if not any(_text(v) in allowed for v in values):
                raise refused(
                    issuer, "invalid_claim", f"claim {'/'.join(path)!r} has no allowed value"
                )
        subject = claim(claims, issuer.id_claim)
        if subject is None:
            raise refused(issuer, "missing_claim", f"claim {name!r} is missing")
        if not isinstance(subject, str | int) or isinstance(subject, bool) or subject == "":
            raise refused(issuer, "invalid_claim", f"claim {name!r} is not a string")
        return str(subject)

    def _team(self, claims: dict[str, Any]) -> str | None:
        path = self.issuer.team_claim
        if path is None:
            return None
        value = claim(claims, path)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            name = "/".join(path)
            raise refused(self.issuer, "invalid_claim", f"claim {name!r} is not one team name")
        return value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _mapped(issuer: Issuer, exc: jwt.PyJWTError) -> Unauthorized:
    """PyJWT's verdict as the gateway's: one code per cause."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return refused(issuer, "token_expired", "it has expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return refused(issuer, "token_not_yet_valid", "it is not valid yet (nbf or iat)")
    if isinstance(exc, jwt.InvalidAudienceError):
        return refused(issuer, "invalid_audience", "its aud is none of the issuer's audiences")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return refused(issuer, "missing_claim", f"claim {exc.claim!r} is missing")
    if isinstance(exc, jwt.InvalidAlgorithmError | jwt.InvalidKeyError):
        return refused(issuer, "invalid_algorithm", "its alg does not fit the key")
    if isinstance(exc, jwt.DecodeError):  # InvalidSignatureError is one
        return refused(issuer, "invalid_signature", "the signature does not verify")
    return refused(issuer, "invalid_claim", "a claim has an invalid value")
