"""The benchmark's store-cost counting: Redis-side counters, MONITOR parsing, the table."""

from __future__ import annotations

import pytest
import redis

from bench import script_replay
from bench.capacity import CapacityPoint, describe, measure
from bench.report import capacity_markdown, store_cost_details, store_cost_table
from bench.storecost import StoreCost, delta, parse_monitor, plain_command_us, snapshot
from bench.targets import ROOT
from tests.harness import RedisServer


def test_counters_count_script_commands_and_reads(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    other = redis.Redis(port=redis_server.port)
    other.ping()  # connect first: the HELLO/CLIENT of a new connection is not under test
    before = snapshot(client)
    # One network write carrying two script calls of two commands each, then one plain SET.
    pipe = other.pipeline(transaction=False)
    script = "redis.call('INCR', KEYS[1]); return redis.call('GET', KEYS[1])"
    pipe.eval(script, 1, "bench:k")
    pipe.eval(script, 1, "bench:k")
    pipe.execute()
    other.set("bench:j", "1")
    change = delta(before, snapshot(client))
    client.delete("bench:k", "bench:j")
    assert change.calls["eval"] == 2
    assert change.calls["incr"] == 2
    assert change.calls["get"] == 2
    assert change.calls["set"] == 1
    assert "info" not in change.calls  # the snapshots' own INFO is taken out
    assert change.commands == 7  # commands run inside scripts count too
    assert change.reads == 2  # the pipeline is one read, the SET another
    assert change.connections == 0  # both clients were connected before
    assert change.cpu_s >= 0


def test_parse_monitor_splits_client_and_script_commands() -> None:
    text = "\n".join(
        [
            "OK",
            '1795919888.913488 [0 127.0.0.1:37906] "evalsha" "abc" "1" "k"',
            '1795919888.913542 [0 lua] "ZADD" "k" "1" "a"',
            '1795919888.913550 [0 lua] "pexpire" "k" "1000"',
            '1795919888.913600 [0 127.0.0.1:37907] "client" "list"',
            '1795919888.913700 [0 127.0.0.1:37906] "ping"',
        ]
    )
    sent, scripted = parse_monitor(text)
    assert dict(sent) == {"evalsha": 1, "ping": 1}
    assert dict(scripted) == {"zadd": 1, "pexpire": 1}


def test_table_and_details() -> None:
    row = StoreCost("standalone", True, "abc1234", requests=1000, rps=5000.0)
    row.commands_run, row.commands_sent, row.script_calls = 14.0, 1.1, 1.05
    row.round_trips, row.cpu_us, row.cpu_us_net, row.command_us = 0.2, 21.0, 20.0, 15.0
    row.plain_us = 2.5
    row.sent_by_name = {"evalsha": 1.05, "ping": 0.001}
    row.in_scripts_by_name = {"hincrby": 4.0}
    row.script_share = [0.3, 0.3, 0.4]
    failed = StoreCost("cluster (3 masters)", False, "abc1234", failure="no cluster")
    table = store_cost_table([row.to_dict(), failed.to_dict()])
    assert table[2].split(" | ")[1:9] == [
        "5,000",
        "14.00 / 1.10",
        "1.05",
        "0.20",
        "21.0 / 20.0",
        "15.0",
        "8.0",
        "50,000",
    ]
    assert "failed: no cluster" in table[3]
    idle = StoreCost("standalone", False, "abc1234", requests=1000, commands_run=0.03)
    idle.cpu_us_net = 0.4  # the background's noise, not a cost per request
    assert "| no store call |" in store_cost_table([idle.to_dict()])[2]
    (details,) = store_cost_details([row.to_dict(), failed.to_dict()])
    assert "sent evalsha 1.05;" in details  # ping at 0.001 per request is left out
    assert "in scripts hincrby 4.00" in details
    assert "script calls per master 30% / 30% / 40%" in details
    assert "one plain pipelined HINCRBY: 2.50 us" in details


def test_plain_command_yardstick(redis_server: RedisServer) -> None:
    us = plain_command_us(redis_server.port, calls=640)
    assert 0 < us < 1000
    assert not redis.Redis(port=redis_server.port).exists("bench:{yardstick}")


@pytest.mark.slow  # drives load for seconds
def test_capacity_driver_runs_the_store_client_against_redis(redis_server: RedisServer) -> None:
    """The saturation point drives this checkout's own store client (batcher and quota.lua)
    against a real Redis and reads what it cost there."""
    point = CapacityPoint("standalone", 8, "test")
    measure([redis_server.port], "standalone", point, 1.0, ROOT)
    assert point.failure is None
    assert point.errors == 0
    assert point.admissions_per_s > 0
    assert point.cpu_us > 0 and point.fleet_rps_per_core is not None
    assert point.per_script_call >= 1.0  # calls of one turn travel together
    assert point.per_windows_read >= 1.0  # an owner's window is read once per batch at most
    table = "\n".join(capacity_markdown([point.to_dict()]))
    assert "| standalone, 8 tokens (`test`) |" in table


@pytest.mark.slow  # replays the script for seconds
def test_script_replay_keeps_redis_busy_with_admitted_calls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The lean driver replays this checkout's quota.lua on a store of its own, in each shape
    and on a 3-master Cluster (owners beyond the first passed undeclared, as the batcher
    does), all its masters or one; it fails on any call refused or in error, or leases left
    behind, so its figures are of admissions that settle."""
    for shape in ([], ["--alone"], ["--cluster"], ["--one-master"]):
        argv = ["--tokens", "50", "--warmup", "0.2", "--seconds", "0.5", "--rounds", "1"]
        assert script_replay.main([*argv, *shape, str(ROOT)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2
        us = float(lines[0].split(": ")[1].split(" us")[0])
        assert us > 0
        assert lines[1].endswith("1.000 of the first")


def test_a_capacity_figure_redis_was_not_busy_for_is_marked() -> None:
    """A point whose Redis was not kept busy measured the driver, not Redis: the report and
    the log line say its figure is inflated; a busy one carries no such mark."""
    busy = CapacityPoint("standalone", 8, "test", busy=0.97, cpu_us=10.0, admissions_per_s=1.0)
    cold = CapacityPoint("standalone", 8, "test", busy=0.35, cpu_us=30.0, admissions_per_s=1.0)
    assert not busy.driver_bound and cold.driver_bound
    assert "not kept busy" not in describe(busy)
    assert describe(cold).endswith("Redis not kept busy: the figure is inflated")
    assert "script_replay" not in "\n".join(capacity_markdown([busy.to_dict()]))
    assert "script_replay" in "\n".join(capacity_markdown([busy.to_dict(), cold.to_dict()]))
