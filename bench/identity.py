"""The JWT row: a trusted issuer whose key set is a file (no JWKS server in the measured
setup), and one token of it, so the gateway serves an identity instead of a static token."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER = "https://bench.issuer.invalid"
AUDIENCE = "best"
KID = "bench-1"


def write_issuer(config_dir: Path, limit: str) -> str:
    """Write auth.yaml and its key file into ``config_dir``; returns a token valid for a day
    whose identity gets ``limit`` as rpm, tpm and concurrency (like the static token's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (config_dir / "bench-jwks.json").write_text(json.dumps({"keys": [{**public, "kid": KID}]}))
    issuer = {
        "name": "bench",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks_file": "bench-jwks.json",
        "algorithms": ["ES256"],
        "limits": {"rpm": int(limit), "tpm": int(limit), "max_concurrency": 100_000},
    }
    # JSON is valid YAML.
    (config_dir / "auth.yaml").write_text(json.dumps({"jwt": [issuer]}, indent=2) + "\n")
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-workload", "iat": now}
    return jwt.encode({**claims, "exp": now + 86_400}, key, "ES256", headers={"kid": KID})
