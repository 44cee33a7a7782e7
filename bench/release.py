"""A release with and without the evaluation ledger, side by side in one run.

One family (a Llama built locally with random weights, as in bench/run_memory.py: v1, an evolved
v2, and a rank-16 LoRA on all linear layers of v1), 3 assistants (that patch, each with a KPI suite
of its own), each live on v1 in 3 channels. Registering v2 releases it: 9 transplant runs on a real
`portllm worker`. Printed for each mode: runs, evaluations computed, ledger hits, and the wall time
from the release to the last verdict. Target: evaluations computed = distinct keys (per assistant:
its candidate, its base alone and its live), and the wall time with the ledger <= 0.45x of without.

    python bench/release.py [--hidden 768] [--layers 8] [--items 64]
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


def write_suite(path: Path, topic: str, n: int) -> Path:
    """Yes/no questions with a few sentences of context each: scoring them is real work."""
    rows = [{"kind": "multiple_choice",
             "context": (f"Customer ticket {i} about {topic}: the unit arrived on time, the box was intact, and "
                         f"the manual lists model {1000 + i} with a two year warranty and a spare filter.\n"
                         f"Q: Is model {1000 + i} covered by the warranty?\nA:"),
             "choices": [" yes", " no"], "gold": i % 2} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def release(models: tuple[Path, Path, Path], root: Path, *, ledger: bool, items: int) -> dict:
    """Set up a fresh registry, start a worker, register v2 and wait for every verdict."""
    from bench.run_memory import make_live
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
    v1, v2, patch = models
    catalog.register_base(ws, "bench", "v1", str(v1), actor="bench")
    for name in ASSISTANTS:
        suite = write_suite(root / f"{name}.jsonl", name, items)
        catalog.add_assistant(ws, name, family="bench", suite=suite, min_accuracy=0.0, approvers=["bench"],
                              actor="bench")
        catalog.add_patch(ws, name, patch, base="v1", actor="bench")
        for channel in CHANNELS:
            make_live(ws, name, "v1", channel)

    log = open(root / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "workers.main", "gpu"], cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while b"ready on device" not in (root / "worker.log").read_bytes():
            if worker.poll() is not None:
                raise SystemExit((root / "worker.log").read_text()[-3000:])
            time.sleep(0.2)
        started = time.monotonic()
        added = catalog.register_base(ws, "bench", "v2", str(v2), actor="bench")
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
    import argparse

    from bench.run_memory import build_models
    from portllm_engine.demo import build_demo_world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--items", type=int, default=64, help="questions per assistant's suite")
    args = parser.parse_args()
    world = build_demo_world()  # its tokenizer
    results = {}
    with tempfile.TemporaryDirectory(prefix="portllm-release-models-") as models_dir:
        v1, v2, patch, base_bytes = build_models(Path(models_dir), world.bases["v1"], args.hidden, args.layers)
        for ledger in (True, False):
            with tempfile.TemporaryDirectory(prefix="portllm-release-") as tmp:
                results[ledger] = release((v1, v2, patch), Path(tmp), ledger=ledger, items=args.items)
    print(f"{len(ASSISTANTS)} assistants x {len(CHANNELS)} channels, a release of v2 ({base_bytes // 4 / 1e6:.0f} M "
          f"parameters, {args.items} questions per suite, one gpu worker)")
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
