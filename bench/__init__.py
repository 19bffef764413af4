"""Side-by-side benchmark of the BEST gateway.

``uv run python -m bench`` starts an nginx upstream with fixed JSON and SSE bodies, a Redis,
the gateway (embedded store, then Redis) and, when installed, LiteLLM's proxy; pins them to
separate cores; drives them with wrk; and writes ``bench/results/``.
"""
