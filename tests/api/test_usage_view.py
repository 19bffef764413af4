"""`GET /admin/tokens` shows what the token's next admission would count: after a round of
malformed and abusive requests, and of requests served, nothing is left in flight."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.inprocess import ADMIN_TOKEN, client, inprocess_settings, running_app

GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
# Bodies the gateway refuses before or after admission, as a fuzzing round sends them.
ABUSE: list[tuple[bytes, dict[str, str]]] = [
    (b"[" * 5000 + b"]" * 5000, {}),  # nested too deeply
    (b'{"model": "m", "messages": [{"role": "us', {}),  # truncated
    (b'{"model": "m"}', {"content-length": "400"}),  # shorter than its content-length
    (b"not json at all", {}),
    (b'{"model": 5, "messages": []}', {}),  # wrong types
    (b'{"model": "m", "messages": "hi"}', {}),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', {}),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', {}),
    (b"\xff\xfe\x00garbage", {}),
    (b"", {}),
]


@pytest.mark.slow  # waits a second after the round
def test_a_round_of_abuse_leaves_no_lease_in_the_usage_view(
    tmp_path: Path, single_provider_config: Path, store_url: str | None
) -> None:
    settings = inprocess_settings(
        single_provider_config,
        tmp_path / "data",
        redis_url=store_url,
        redis_prefix=f"usage-{tmp_path.name}",
        default_max_concurrency=50,
        env={"P_KEY": "k"},
    )

    async def main() -> tuple[list[int], int, list[int]]:
        async with (
            running_app(settings) as app,
            client(app) as http,
            client(app, ADMIN_TOKEN) as admin,
        ):
            statuses = []
            for _ in range(3):
                for body, headers in ABUSE:
                    answer = await http.post(
                        "/v1/chat/completions",
                        content=body,
                        headers={"content-type": "application/json", **headers},
                    )
                    statuses.append(answer.status_code)
                answer = await http.post("/v1/chat/completions", json=GOOD)
                statuses.append(answer.status_code)
            await asyncio.sleep(1.0)
            listed = (await admin.get("/admin/tokens")).json()["data"]
            usage = next(t for t in listed if t["kind"] == "static")["usage"]
            both = await asyncio.gather(
                http.post("/v1/chat/completions", json=GOOD),
                http.post("/v1/chat/completions", json=GOOD),
            )
            return statuses, usage["in_flight"], [r.status_code for r in both]

    statuses, in_flight, both = asyncio.run(main())
    assert 200 in statuses and all(s < 500 for s in statuses), statuses
    assert in_flight == 0
    assert both == [200, 200]
