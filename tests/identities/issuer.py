"""A token issuer for tests: RSA and EC signing keys, tokens signed with them (and forged
ones), and a JWKS endpoint on loopback (a real HTTP server in a thread) serving the public
keys with ``Cache-Control``, counting its requests, and able to go down."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test"
AUDIENCE = "best"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    """One signing key pair and its public JWK."""

    def __init__(self, kid: str, kind: str = "RSA") -> None:
        self.kid = kid
        self.alg = "RS256" if kind == "RSA" else "ES256"
        if kind == "RSA":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk.update({"kid": kid, "use": "sig"})

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


def claims(sub: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600, **extra}


def sign(key: Key, payload: Mapping[str, Any], kid: str | None = None, alg: str = "") -> str:
    headers = {"kid": kid if kid is not None else key.kid}
    return jwt.encode(dict(payload), key.private, algorithm=alg or key.alg, headers=headers)


def unsigned(payload: Mapping[str, Any], kid: str) -> str:
    """``alg: none``: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(dict(payload)).encode())}."


def hs256_with_public_key(key: Key, payload: Mapping[str, Any]) -> str:
    """The key-confusion forgery: HS256 whose secret is the issuer's public RSA key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = _b64(json.dumps(dict(payload)).encode())
    signature = hmac.new(key.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


class JwksServer:
    """Serves ``{"keys": [...]}`` at ``/jwks`` with ``Cache-Control: max-age=<max_age>``."""

    def __init__(self, keys: list[Key], max_age: int = 300, delay_s: float = 0.0) -> None:
        self.keys = list(keys)
        self.max_age = max_age
        self.delay_s = delay_s
        self.down = False
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests += 1
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"keys": [k.jwk for k in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"public, max-age={server.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/jwks"

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def issuer_entry(url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "corp",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "jwks_url": url,
        **overrides,
    }


def write_auth(config_dir: Path, *entries: Mapping[str, Any]) -> None:
    (config_dir / "auth.yaml").write_text(yaml.safe_dump({"jwt": [dict(e) for e in entries]}))
