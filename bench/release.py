"""A release with and without the evaluation ledger, side by side in one run.

One family (the demo world's v1 and v2), 3 assistants (the demo patch, each with its own third of
the demo suite), each live on v1 in 3 channels. Registering v2 releases it: 9 transplant runs on a
real `portllm worker`. Printed for each mode: runs, evaluations computed, ledger hits, and the
wall time from the release to the last verdict. Target: evaluations computed = distinct keys, and
the wall time with the ledger <= 0.45x of without.

    python bench/release.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ASSISTANTS = ("support", "billing", "returns")
CHANNELS = ("#a", "#b", "#c")


def split_suite(suite: Path, root: Path) -> list[Path]:
    """The suite in thirds: one per assistant, so each has its own candidate and base-alone keys."""
    lines = suite.read_text().splitlines(keepends=True)
    parts = []
    for i, name in enumerate(ASSISTANTS):
        path = root / f"{name}.jsonl"
        path.write_text("".join(lines[i::len(ASSISTANTS)]))
        parts.append(path)
    return parts


def make_live(ws, assistant: str, channel: str) -> None:
    """Live on v1 in `channel`, as if it had been run and approved (nothing scored yet)."""
    from registry import services

    with ws.session() as s:
        patch = services.current_patch(s, assistant)
        run, _ = services.request_run(s, assistant=assistant, version="v1", idempotency_key=f"live-{assistant}-{channel}",
                                      requested_by="bench", channel=channel, patch_id=patch.id)
        services.claim_run(s, run.id, "bench")
        services.finish_run(s, run.id, status="succeeded")
        services.open_rollout(s, run.id, verdict="pass")
        services.decide_rollout(s, run.id, approve=True, user="bench")


def release(world, root: Path, *, ledger: bool) -> dict:
    """Set up a fresh registry, start a worker, register v2 and wait for every verdict."""
    from portllm_core.flows import catalog
    from portllm_core.workspace import Workspace
    from registry.cli import upgrade
    from registry.models import Evaluation, Run

    os.environ.update(PORTLLM_DATA_DIR=str(root / "data"), PORTLLM_NOTIFIER="console", PORTLLM_SWEEP_INTERVAL_S="0",
                      PORTLLM_LEDGER=str(ledger).lower(), HF_HUB_OFFLINE="1")
    for key in ("PORTLLM_DATABASE_URL", "PORTLLM_BROKER_URL"):
        os.environ.pop(key, None)
    ws = Workspace()
    upgrade(ws.settings.resolved_database_url())
    catalog.register_base(ws, "demo", "v1", str(world.bases["v1"]), actor="bench")
    for name, suite in zip(ASSISTANTS, split_suite(world.suite, root)):
        catalog.add_assistant(ws, name, family="demo", suite=suite, approvers=["bench"], actor="bench")
        catalog.add_patch(ws, name, world.patch, base="v1", actor="bench")
        for channel in CHANNELS:
            make_live(ws, name, channel)

    log = open(root / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "workers.main", "gpu"], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while b"ready on device" not in (root / "worker.log").read_bytes():
            if worker.poll() is not None:
                raise SystemExit((root / "worker.log").read_text()[-3000:])
            time.sleep(0.2)
        started = time.monotonic()
        added = catalog.register_base(ws, "demo", "v2", str(world.bases["v2"]), actor="bench")
        run_ids = [run_id for run_id, _, _ in added.release.queued]
        while True:
            with ws.session_factory() as s:
                runs = [s.get(Run, run_id) for run_id in run_ids]
                if all(run.status in ("succeeded", "failed") for run in runs):
                    failed = [f"#{run.id}: {run.error}" for run in runs if run.status == "failed"]
                    break
            time.sleep(0.2)
        wall = time.monotonic() - started
        with ws.session_factory() as s:
            used = [(e.subject, e.computed) for e in s.query(Evaluation).filter(Evaluation.run_id.in_(run_ids))]
    finally:
        worker.terminate()
        worker.wait(60)
        ws.close()
    if failed:
        raise SystemExit(f"runs failed: {failed}")
    return {"runs": len(run_ids), "wall_s": wall,
            "computed": Counter(subject for subject, computed in used if computed),
            "hits": sum(1 for _, computed in used if not computed)}


def main() -> int:
    from portllm_engine.demo import build_demo_world

    world = build_demo_world()
    results = {}
    for ledger in (True, False):
        with tempfile.TemporaryDirectory(prefix="portllm-release-") as tmp:
            results[ledger] = release(world, Path(tmp), ledger=ledger)
    print(f"{len(ASSISTANTS)} assistants x {len(CHANNELS)} channels, a release of v2 (demo world, one gpu worker)")
    print(f"{'':14}{'runs':>6}{'computed':>10}{'  (candidate / base alone / live)':34}{'ledger hits':>12}{'wall s':>9}")
    for ledger, label in ((True, "with ledger"), (False, "no ledger")):
        r = results[ledger]
        by = r["computed"]
        split = f"  ({by['candidate']} / {by['target_base']} / {by['live']})"
        print(f"{label:14}{r['runs']:>6}{sum(by.values()):>10}{split:34}{r['hits']:>12}{r['wall_s']:>9.1f}")
    ratio = results[True]["wall_s"] / results[False]["wall_s"]
    distinct = len(ASSISTANTS) * 3  # per assistant: its candidate, its base alone and its live, on its suite
    print(f"wall time with / without the ledger: {ratio:.2f}x (target <= 0.45x); "
          f"computed with the ledger {sum(results[True]['computed'].values())} = distinct keys {distinct}")
    print(json.dumps({"ratio": round(ratio, 3)}))
    return 0 if ratio <= 0.45 and sum(results[True]["computed"].values()) == distinct else 1


if __name__ == "__main__":
    raise SystemExit(main())
