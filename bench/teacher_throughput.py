"""Teacher throughput against the fake OpenAI-compatible server (tests/fakes/openai_server.py).

    python bench/teacher_throughput.py [--out bench/results/teacher_throughput.json] [--quick]

Three measurements, each through the real teacher (HTTP client, limiter, retries, durable cache):

1. Rate: the server enforces a requests-per-minute limit (a token bucket, like a provider's); the
   teacher is configured with the same limit. Reported: the rate the server accepted in steady state
   (after the first burst) against the enforced rate (aim: >= 0.95), and the 429s it had to send.
2. Speed-up: the same items at 200 ms server latency, one request at a time vs ``concurrency`` in flight.
3. Incremental run: a second run over the same inputs with 10% new ones; requests paid vs new inputs
   (aim: equal), through the durable cache on disk.

Prints a Markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydantic import BaseModel, SecretStr

from tasks.teacher.base import CompletionRequest, messages
from tasks.teacher.cache import RequestCache
from tasks.teacher.openai_compat import OpenAIChat
from tasks.teacher.teacher import Teacher
from tests.fakes.openai_server import OpenAIServer


class Note(BaseModel):
    title: str
    rating: int


def _teacher(server: OpenAIServer, cache: RequestCache | None = None, **kwargs: object) -> Teacher:
    return Teacher(OpenAIChat("fake-teacher", server.base_url, SecretStr("sk-bench")), cache, **kwargs)  # type: ignore[arg-type]


def _ask(i: int, tag: str) -> CompletionRequest:
    return CompletionRequest(messages=messages(("user", f"{tag} item {i}")), max_tokens=32)


def bench_rate(n: int, limit_rpm: float, server_burst_s: float, client_burst_s: float, concurrency: int,
               latency_s: float) -> dict:
    rate = limit_rpm / 60
    with OpenAIServer(latency_s=latency_s, rate_limit_rpm=limit_rpm, rate_limit_burst=rate * server_burst_s) as server:
        teacher = _teacher(server, requests_per_minute=limit_rpm, burst_s=client_burst_s, concurrency=concurrency)
        start = time.monotonic()
        teacher.map(lambda i: teacher.complete(_ask(i, "rate")), list(range(n)), progress=lambda d, t: None)
        wall = time.monotonic() - start
        accepted = sorted(r.arrived for r in server.log if r.status == 200)
        refused = sum(1 for r in server.log if r.status == 429)
    burst = max(1, int(rate * client_burst_s))
    steady = accepted[2 * burst:]  # well past the first burst: the paced part of the run
    steady_rate = (len(steady) - 1) / (steady[-1] - steady[0])
    window = accepted[-1] - accepted[0]
    allowance = rate * server_burst_s + rate * window  # the most the server would accept in that window
    return {
        "requests": n, "enforced_rpm": limit_rpm, "enforced_rps": rate, "server_burst": rate * server_burst_s,
        "client_burst": burst, "concurrency": concurrency, "latency_s": latency_s, "wall_s": round(wall, 3),
        "accepted": len(accepted), "refused_429": refused, "steady_rps": round(steady_rate, 3),
        "steady_ratio": round(steady_rate / rate, 4), "allowance_used": round(len(accepted) / allowance, 4),
    }


def bench_speedup(n: int, latency_s: float, concurrency: int) -> dict:
    with OpenAIServer(latency_s=latency_s) as server:
        times = {}
        for label, workers in (("sequential", 1), ("concurrent", concurrency)):
            teacher = _teacher(server, concurrency=workers)
            start = time.monotonic()
            teacher.map(lambda i, t=teacher, tag=label: t.complete(_ask(i, tag)), list(range(n)),
                        concurrency=workers, progress=lambda d, t: None)
            times[label] = time.monotonic() - start
    return {"items": n, "latency_s": latency_s, "concurrency": concurrency,
            "sequential_s": round(times["sequential"], 3), "concurrent_s": round(times["concurrent"], 3),
            "speedup": round(times["sequential"] / times["concurrent"], 2),
            "ideal_speedup": round(n / math.ceil(n / concurrency), 2)}


def bench_incremental(n: int, new_fraction: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp, OpenAIServer() as server:
        path = Path(tmp) / "teacher.sqlite"
        week1 = [f"paper {i}" for i in range(n)]
        new = max(1, int(n * new_fraction))
        week2 = week1[new:] + [f"new paper {i}" for i in range(new)]
        paid = []
        for inputs in (week1, week2):
            server.clear()
            cache = RequestCache(path)  # a new process's view of the same file
            teacher = _teacher(server, cache, concurrency=8)
            out = teacher.map(lambda x, t=teacher: t.structured(messages(("user", x)), Note, max_tokens=32)[0],
                              inputs, progress=lambda d, t: None)
            assert all(out)
            paid.append(server.requests)
            cache.close()
    return {"inputs": n, "new_inputs": new, "first_run_requests": paid[0], "second_run_requests": paid[1],
            "paid_per_new_input": round(paid[1] / new, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "teacher_throughput.json")
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 10 s)")
    args = parser.parse_args()
    quick = args.quick
    rate = bench_rate(n=80 if quick else 240, limit_rpm=1200, server_burst_s=1.0, client_burst_s=0.5,
                      concurrency=16, latency_s=0.05)
    speed = bench_speedup(n=16 if quick else 48, latency_s=0.2, concurrency=16)
    incr = bench_incremental(n=50 if quick else 200, new_fraction=0.1)
    result = {"machine": {"python": platform.python_version(), "platform": platform.platform()},
              "rate": rate, "speedup": speed, "incremental": incr}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    rows = [
        ("Rate vs enforced limit", (f"{rate['steady_rps']:.2f} req/s of {rate['enforced_rps']:.0f} "
                                    f"({rate['requests']} requests, {rate['refused_429']} refused)"),
         f"{rate['steady_ratio']:.3f}", ">= 0.95"),
        ("Allowance used (burst + rate x window)", f"{rate['accepted']} accepted", f"{rate['allowance_used']:.3f}",
         ">= 0.95"),
        (f"Speed-up at {speed['latency_s'] * 1000:.0f} ms latency",
         (f"{speed['sequential_s']:.2f} s -> {speed['concurrent_s']:.2f} s "
          f"({speed['items']} items, {speed['concurrency']} in flight)"),
         f"{speed['speedup']:.1f}x", f"<= {speed['ideal_speedup']}x"),
        ("Incremental run: requests / new inputs",
         (f"{incr['second_run_requests']} / {incr['new_inputs']} "
          f"({incr['inputs']} inputs, first run {incr['first_run_requests']})"),
         f"{incr['paid_per_new_input']:.2f}", "1.00"),
    ]
    print("| measurement | detail | value | aim |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
