"""wrk driver: a Lua script per request kind, one run, and the parsed result."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import HELPER_CORE, pinned
from bench.upstream import JSON_MODEL, SSE_MODEL

MARKER = "BENCH_RESULT "

# The wrk `done` hook prints exact figures (latencies in microseconds) as one JSON line, so
# nothing depends on wrk's rounded human-readable units.
_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}\\n',
    "MARKER", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
""".replace("MARKER", MARKER)


# A validating run also inspects every response body (slower, so only for short runs): a 200
# with a chat.completion, or a stream ending in [DONE] without an error event, counts as good
# (for the Messages API: a message, or a stream with its message_stop).
_VALIDATE_HOOK = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
good_count = 0
bad_count = 0
bad_first = ""
response = function(status, headers, body)
  local good = status == 200 and body:find('"error"', 1, true) == nil
  if good and KIND == "sse" then
    good = body:find(API == "messages" and "event: message_stop" or "data: [DONE]", 1, true)
      ~= nil
  elseif good then
    good = body:find(API == "messages" and '"type":"message"' or '"choices"', 1, true) ~= nil
  end
  if good then
    good_count = good_count + 1
  else
    bad_count = bad_count + 1
    if bad_first == "" then bad_first = status .. " " .. body:sub(1, 400) end
  end
end
local plain_done = done
done = function(summary, latency, requests)
  plain_done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format('CHECK_MARKER{"good":%d,"bad":%d}\\n', t:get("good_count"),
      t:get("bad_count")))
    local first = t:get("bad_first")
    if first ~= "" then io.write("FIRST_MARKER" .. first:gsub("\\n", "\\\\n") .. "\\n") end
  end
end
"""
CHECK_MARKER = "BENCH_CHECK "
FIRST_MARKER = "BENCH_FIRST_BAD "


# The response cache's rows: "hit" repeats one body with the opt-in header (every request after
# the first is answered from the cache); "miss" opts in with a body new on every request (each
# is looked up, sent upstream and stored).
CACHE_KINDS = ("hit", "miss")
CACHE_TTL = "3600"


def request_body(kind: str, model: str | None = None) -> str:
    """The request of a row; the same body is a valid Messages API request too."""
    body: dict[str, object] = {
        "model": model or (SSE_MODEL if kind == "sse" else JSON_MODEL),
        "messages": [{"role": "user", "content": "Say hello in four words."}],
        "max_tokens": 16,
    }
    if kind == "sse":
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def render_script(
    kind: str,
    token: str | None,
    model: str | None = None,
    validate: bool = False,
    tokens: Sequence[str] = (),
    api: str = "chat",
) -> str:
    """A wrk script that POSTs one body; ``kind == "mixed"`` alternates JSON and SSE.

    With ``tokens`` (not with "mixed"), requests cycle through those bearer tokens.
    """
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    if token:
        lines.append(f'wrk.headers["Authorization"] = {_lua_string("Bearer " + token)}')
    if kind in CACHE_KINDS:
        lines.append(f'wrk.headers["x-best-cache-ttl"] = "{CACHE_TTL}"')
    if kind == "miss":
        # Unique across runs too (a run lasts at least a second; the script may be reused).
        template = request_body(kind, model).replace("four words.", "four words %s-%d-%d.")
        lines += [
            f"local template = {_lua_string(template)}",
            f"local run = {_lua_string(uuid.uuid4().hex[:8])}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  return wrk.format(nil, nil, nil, string.format(template, run, os.time(), n))",
            "end",
        ]
    elif tokens and kind != "mixed":
        headers = ", ".join(_lua_string("Bearer " + t) for t in tokens)
        lines += [
            f"wrk.body = {_lua_string(request_body(kind, model))}",
            f"local auth = {{{headers}}}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            '  wrk.headers["Authorization"] = auth[(n % #auth) + 1]',
            "  return wrk.format()",
            "end",
        ]
    elif kind == "mixed":
        lines += [
            f"local bodies = {{{_lua_string(request_body('json'))}, "
            f"{_lua_string(request_body('sse'))}}}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  return wrk.format(nil, nil, nil, bodies[(n % 2) + 1])",
            "end",
        ]
    else:
        lines.append(f"wrk.body = {_lua_string(request_body(kind, model))}")
    script = "\n".join(lines) + "\n" + _DONE_HOOK
    if validate and kind != "mixed":
        hook = _VALIDATE_HOOK.replace("CHECK_MARKER", CHECK_MARKER)
        script += f"KIND = {_lua_string(kind)}\nAPI = {_lua_string(api)}\n"
        script += hook.replace("FIRST_MARKER", FIRST_MARKER)
    return script


@dataclass
class WrkResult:
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    timeouts: int
    # Filled by validating runs only: responses whose body was right / wrong, and the first
    # wrong one (status and start of the body).
    good: int | None = None
    bad: int | None = None
    first_bad: str | None = None
    # Filled by the runner: share of one core the system under test used during the run, and
    # how busy its core was (busy well above the share = something else ran on that core).
    cpu: dict[str, float] | None = None

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors + self.timeouts + (self.bad or 0)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["errors"] = self.errors
        return out


def parse_output(text: str, connections: int) -> WrkResult:
    """Parse the ``done`` hook line of a wrk run."""
    for line in text.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER) :])
            break
    else:
        raise ValueError(f"no result line in wrk output:\n{text}")
    duration_s = data["duration_us"] / 1e6
    good = bad = None
    first_bad = None
    for line in text.splitlines():
        if line.startswith(CHECK_MARKER):
            check = json.loads(line[len(CHECK_MARKER) :])
            good, bad = check["good"], check["bad"]
            # non-2xx answers are already counted by wrk itself
            bad = max(0, bad - data["status"])
        elif line.startswith(FIRST_MARKER):
            first_bad = line[len(FIRST_MARKER) :]
    return WrkResult(
        connections=connections,
        duration_s=round(duration_s, 3),
        requests=data["requests"],
        rps=round(data["requests"] / duration_s, 1) if duration_s else 0.0,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        mean_ms=round(data["mean"] / 1000, 3),
        max_ms=data["max"] / 1000,
        non2xx=data["status"],
        socket_errors=data["connect"] + data["read"] + data["write"],
        timeouts=data["timeout"],
        good=good,
        bad=bad,
        first_bad=first_bad,
    )


_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")


def run_wrk(
    url: str,
    script: Path,
    connections: int,
    duration_s: float,
    timeout_s: float = 10.0,
    wrk: str = "wrk",
) -> WrkResult:
    """One wrk run with one thread, pinned to the helper core."""
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(
        pinned(argv, HELPER_CORE),
        capture_output=True,
        text=True,
        timeout=duration_s + timeout_s + 60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()}")
    result = parse_output(proc.stdout, connections)
    match = _RPS_RE.search(proc.stdout)
    if match and result.requests and abs(float(match.group(1)) - result.rps) > 0.05 * result.rps:
        raise RuntimeError(f"wrk hook and summary disagree:\n{proc.stdout}")
    return result
