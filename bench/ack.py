"""Slash-command ack latency of the Slack app, over real HTTP, signed as Slack signs.

Starts `bot.server.serve_http` (gunicorn, the production path) on loopback against a fresh
SQLite registry and the embedded SQLite queue in a temporary data dir, with a local fake of
the Slack Web API. Each command is `patch support-assistant onto v2` with its own trigger id,
so every request writes a run row and publishes a task: the slowest thing a command does.
Prints median and p99 of the ack (the HTTP answer Slack waits for: target p99 < 300 ms, Slack
gives up after 3 s) and of the reply ("Run #N queued", posted to the command's response_url
once the run row is written and the task published), for 200 sequential and 50 concurrent
requests.

    python bench/ack.py [--sequential 200] [--concurrent 50] [--workers 2] [--threads 32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from registry.cli import upgrade  # noqa: E402
from registry.db import make_session_factory  # noqa: E402
from tests.bot.conftest import APPROVER, CHANNEL, register_world  # noqa: E402
from tests.bot.slack_http import SIGNING_SECRET, slash, start_server  # noqa: E402
from tests.fixtures.fake_slack import FakeSlack  # noqa: E402

COMMAND = "patch support-assistant onto v2"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Timings:
    """Ack latency (the HTTP answer) and reply latency (the respond() post reaching the fake Slack)."""

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        self.sent: dict[str, float] = {}
        self.acks: dict[str, float] = {}

    def slash(self, url: str, trigger_id: str, session: requests.Session | None = None,
              secret: str = SIGNING_SECRET) -> None:
        response_url = self.fake.url + f"response/{trigger_id}"
        self.sent[trigger_id] = time.time()
        started = time.perf_counter()
        response = slash(url, COMMAND, user=APPROVER, channel=CHANNEL, trigger_id=trigger_id,
                         response_url=response_url, session=session, secret=secret)
        elapsed = time.perf_counter() - started
        if response.status_code != (200 if secret == SIGNING_SECRET else 401):
            raise RuntimeError(f"unexpected answer {response.status_code}: {response.text[:200]}")
        self.acks[trigger_id] = elapsed

    def replies(self, prefix: str, timeout_s: float = 60.0) -> list[float]:
        """Seconds from sending to the "Run #N queued" reply, for the triggers starting with prefix."""
        wanted = {t for t in self.sent if t.startswith(prefix)}
        deadline = time.monotonic() + timeout_s
        while True:
            got = {c.method.removeprefix("response/"): c for c in self.fake.calls if c.method.startswith("response/")}
            if wanted <= set(got) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        missing = wanted - set(got)
        if missing:
            raise RuntimeError(f"{len(missing)} replies never came")
        for t in wanted:
            if "queued" not in got[t].body.get("text", ""):
                raise RuntimeError(f"unexpected reply: {got[t].body.get('text')}")
        return [got[t].at - self.sent[t] for t in wanted]

    def ack_times(self, prefix: str) -> list[float]:
        return [v for t, v in self.acks.items() if t.startswith(prefix)]


def burst(n: int, send, errors: list[Exception]) -> None:
    """`n` requests released at once from `n` threads."""
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        try:
            send(i)
        except Exception as exc:  # a reset connection or a timeout: counted, reported
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def report(label: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(f"{label:<28} n={len(ms):<4} median {statistics.median(ms):7.1f} ms   p99 {percentile(ms, 0.99):7.1f} ms"
          f"   max {max(ms):7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="portllm-bench-ack-") as tmp:
        data_dir = Path(tmp)
        database_url = f"sqlite:///{data_dir / 'portllm.db'}"
        upgrade(database_url)
        register_world(make_session_factory(database_url))
        fake = FakeSlack().start()
        env = {"PORTLLM_DATA_DIR": str(data_dir), "PORTLLM_DATABASE_URL": database_url,
               "SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": SIGNING_SECRET,
               "SLACK_API_URL": fake.url,
               # one bench "person" queues far more runs than a real one may in an hour
               "PORTLLM_RUNS_PER_USER_PER_HOUR": "1000000", "PORTLLM_RUNS_PER_ASSISTANT_PER_HOUR": "1000000"}
        server = start_server(env, data_dir / "server.log", workers=args.workers, threads=args.threads)
        timings = Timings(fake)
        try:
            for i in range(5):  # every worker process has built its app and opened its connections
                timings.slash(server.url, f"warm-{i}")
            timings.replies("warm-")
            with requests.Session() as session:
                for i in range(args.sequential):
                    timings.slash(server.url, f"seq-{i}", session)
                    timings.replies(f"seq-{i}")  # one at a time: the next command after the reply
            errors: list[Exception] = []
            # The floor first: the same burst with a wrong signature, refused before any listener
            # runs, measures what the client, the sockets and this machine's load cost by themselves.
            burst(args.concurrent, lambda i: timings.slash(server.url, f"floor-{i}", secret="wrong"), errors)
            burst(args.concurrent, lambda i: timings.slash(server.url, f"burst-{i}"), errors)
            burst_replies = timings.replies("burst-")
        except Exception:
            print((data_dir / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            server.stop()
            fake.stop()
        print(f"slash-command ack latency, gunicorn gthread {args.workers} workers x {args.threads} threads, "
              f"SQLite registry + SQLite queue; each command writes a run row and publishes a task right after its ack")
        sequential, concurrent = timings.ack_times("seq-"), timings.ack_times("burst-")
        report("ack, sequential", sequential)
        report(f"ack, burst of {args.concurrent}", concurrent)
        floor = timings.ack_times("floor-")
        report(f"401, burst of {args.concurrent} (floor)", floor)
        report("reply, sequential", [timings.replies(f"seq-{i}")[0] for i in range(args.sequential)])
        report(f"reply, burst of {args.concurrent}", burst_replies)
        if errors:
            print(f"{len(errors)} of the burst failed: {errors[0]}")
        if concurrent and floor:
            print(f"burst ack p99 / floor p99: {percentile(concurrent, 0.99) / percentile(floor, 0.99):.2f}x; "
                  f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        worst = max(percentile(sequential, 0.99), percentile(concurrent, 0.99) if concurrent else 0)
        print(f"p99 target 300 ms: {'met' if worst < 0.3 and not errors else 'missed'}")
        return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
