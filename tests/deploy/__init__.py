"""Tests of the deployment and observability artifacts: Helm chart, Prometheus rules and
config, Grafana dashboard, docker-compose topology and its loopback twin (deploy/local_fleet.py)."""
