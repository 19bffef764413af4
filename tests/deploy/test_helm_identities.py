"""The chart's identities: issuers from values rendered into auth.yaml, and the cluster's own
service-account tokens trusted with the CA and token the gateway needs to fetch their keys."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.identities.config import AUTH_FILE, load_auth
from tests.deploy.test_helm import ALL_ON, Obj, gateway_container, named, one, render

MOUNT = "/var/run/secrets/best/kubernetes"


@pytest.fixture(scope="module")
def all_on() -> list[Obj]:
    return render("-f", str(ALL_ON))


def test_no_issuer_renders_no_auth_file_and_mounts_no_token() -> None:
    objects = render()
    assert AUTH_FILE not in named(objects, "ConfigMap", "rel-best")["data"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert all(v["name"] != "kubernetes-jwks" for v in pod["volumes"])


def test_the_cluster_and_listed_issuers_become_a_valid_auth_file(
    all_on: list[Obj], tmp_path: Path
) -> None:
    text = named(all_on, "ConfigMap", "rel-best")["data"][AUTH_FILE]
    entries = yaml.safe_load(text)["jwt"]
    cluster = entries[0]
    assert cluster["name"] == "kubernetes" and cluster["audiences"] == ["best"]
    assert cluster["jwks_url"] == "https://kubernetes.default.svc/openid/v1/jwks"
    assert cluster["team_claim"] == "kubernetes.io/namespace"
    assert entries[1]["name"] == "okta"
    # The gateway loads it as is once the mounted files exist: here, stand-ins for them.
    for key, content in (("jwks_ca_file", _self_signed_ca()), ("jwks_token_file", b"t")):
        assert cluster[key].startswith(MOUNT + "/")
        stand_in = tmp_path / Path(cluster[key]).name
        stand_in.write_bytes(content)
        cluster[key] = str(stand_in)
    (tmp_path / AUTH_FILE).write_text(yaml.safe_dump({"jwt": entries}))
    issuers = load_auth(tmp_path).issuers
    assert [i.name for i in issuers] == ["kubernetes", "okta"]
    assert issuers[0].limits.rpm == 600
    assert issuers[0].required_claims == (
        (("kubernetes.io", "namespace"), frozenset({"ml", "web"})),
    )


def test_the_cluster_issuer_mounts_a_token_and_the_cluster_ca(all_on: list[Obj]) -> None:
    pod = one(all_on, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "kubernetes-jwks"]
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    (mount,) = [m for m in gateway_container(all_on)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == MOUNT and mount["readOnly"] is True


def _self_signed_ca() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)
