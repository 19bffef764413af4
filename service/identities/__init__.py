"""Identities from the platform: JWTs of trusted issuers (OIDC providers, Kubernetes
service accounts) as quota owners; see ``identities.py``."""
