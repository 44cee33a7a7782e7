"""Bring your own models: bases, assistants and patches registered through the CLI, read back as JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.admin.tiny_world import FACTS

REPO = Path(__file__).resolve().parents[2]


def test_bases_are_listed_with_fingerprint_and_signature(registered, tiny_world):
    bases = registered.json("base", "list")
    assert [(b["family"], b["version"]) for b in bases] == [("tiny", "v1"), ("tiny", "v2"), ("tiny", "other")]
    v1, v2, other = bases
    assert v1["source_ref"] == str(tiny_world.v1.resolve())
    assert len(v1["fingerprint"]) == 64 and v1["fingerprint"] != v2["fingerprint"]
    assert v1["signature"]["digest"] == v2["signature"]["digest"] != other["signature"]["digest"]
    assert (v1["signature"]["model_type"], v1["signature"]["hidden_size"], other["signature"]["hidden_size"]) == (
        "llama", 16, 24)
    assert v1["tokenizer_fingerprint"] == v2["tokenizer_fingerprint"]
    assert v1["registered_by"] == "ops"
    assert registered.json("base", "list", "TINY") == bases  # families match case-insensitively
    table = registered.ok("base", "list").stdout
    assert "v2" in table and "llama" in table


def test_the_same_weights_under_a_new_version_are_another_label_or_a_warning_in_another_family(
        registered, tiny_world):
    result = registered.ok("base", "add", "tiny", "v1-copy", tiny_world.v1)
    v1 = registered.json("base", "list")[0]
    assert "tiny v1-copy has the same weights as tiny v1: registered as another label" in result.stdout
    copy = registered.json("base", "list")[-1]
    assert (copy["version"], copy["fingerprint"]) == ("v1-copy", v1["fingerprint"])
    elsewhere = registered.ok("base", "add", "tiny-fork", "v1", tiny_world.v1)  # new to that family: released
    assert f"warning: same weights as tiny v1 of another family (fingerprint {v1['fingerprint'][:12]})" \
        in " ".join(elsewhere.stderr.split())
    assert "Release tiny-fork v1" in elsewhere.stdout


def test_an_assistant_keeps_its_suite_content_addressed_and_can_be_changed(registered, tiny_world, tmp_path):
    [support] = registered.json("assistant", "list")
    assert (support["family"], support["approvers"], support["admins"]) == ("tiny", ["alice"], ["bob"])
    assert (support["min_accuracy"], support["max_regression"], support["owner"]) == (0.0, 1.0, "ops")
    stored = registered.data_dir / "artifacts" / "sha256" / support["suite_digest"][:2] / support["suite_digest"]
    assert support["suite_ref"] == f"sha256:{support['suite_digest']}"
    assert stored.read_bytes() == tiny_world.suite.read_bytes()

    shorter = tmp_path / "suite-v2.jsonl"
    shorter.write_text("".join(line + "\n" for line in tiny_world.suite.read_text().splitlines()[:4]))
    registered.ok(
        "assistant", "set", "support", "--suite", shorter, "--min-accuracy", "0.6",
        "--add-approver", "carol", "--remove-approver", "alice", "--system-prompt", "Answer in one word.",
    )
    [changed] = registered.json("assistant", "list")
    assert changed["approvers"] == ["carol"] and changed["admins"] == ["bob"]
    assert (changed["min_accuracy"], changed["max_regression"]) == (0.6, 1.0)
    assert changed["system_prompt"] == "Answer in one word."
    assert changed["suite_digest"] != support["suite_digest"]
    assert registered.ok("assistant", "list").stdout.count("support") == 1


def test_who_may_request_runs_and_the_four_eyes_rule_are_set_per_assistant(registered):
    [support] = registered.json("assistant", "list")
    assert (support["requesters"], support["four_eyes"]) == ([], False)  # everyone; no four-eyes rule
    registered.ok("assistant", "set", "support", "--add-requester", "U0ML00001", "--add-requester", "dave",
                  "--four-eyes")
    [changed] = registered.json("assistant", "list")
    assert (changed["requesters"], changed["four_eyes"]) == (["U0ML00001", "dave"], True)
    registered.ok("assistant", "set", "support", "--remove-requester", "dave", "--no-four-eyes")
    [changed] = registered.json("assistant", "list")
    assert (changed["requesters"], changed["four_eyes"]) == (["U0ML00001"], False)
    refused = registered("assistant", "set", "support", "--remove-requester", "mallory")
    assert refused.exit_code == 2 and "mallory is not a requester" in refused.stderr


def test_a_peft_adapter_trained_elsewhere_is_imported_listed_and_exported_loadable(registered, tiny_world, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    result = registered.ok("patch", "add", "support", tiny_world.adapter, "--base", "v1",
                           "--train-data", tiny_world.train_data)
    assert result.stdout.startswith("Patch #1 added to support: trained on tiny v1, r 4, alpha 8, 4 modules")
    [patch] = registered.json("patch", "list", "support")
    assert patch["origin_base"] == {"family": "tiny", "version": "v1"}
    assert (patch["rank"], patch["alpha"], len(patch["target_modules"])) == (4, 8.0, 4)
    assert patch["provenance"]["kind"] == "import"
    data_digest = patch["train_data_ref"].removeprefix("sha256:")
    assert patch["provenance"]["dataset_sha256"] == data_digest
    assert (registered.data_dir / "artifacts" / "sha256" / data_digest[:2] / data_digest).read_bytes() == (
        tiny_world.train_data.read_bytes())

    out = tmp_path / "exported"
    registered.ok("patch", "export", "1", out)
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "portllm.json"}
    manifest = json.loads((out / "portllm.json").read_text())
    assert manifest["origin_fingerprint"] == registered.json("base", "list")[0]["fingerprint"]
    exported = load_file(out / "adapter_model.safetensors")
    original = load_file(tiny_world.adapter / "adapter_model.safetensors")
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_world.v1), out)
    assert model.peft_config["default"].r == 4

    # The exported PortLLM patch comes back in as is (its manifest names v1 as its origin).
    registered.ok("patch", "add", "support", out, "--base", "v1")
    assert [p["artifact_digest"] for p in registered.json("patch", "list")] == [patch["artifact_digest"]] * 2


def test_patch_train_local_trains_stores_and_registers_with_provenance(registered, tiny_world):
    result = registered.ok("patch", "train", "support", "--base", "v2", "--data", tiny_world.train_data,
                           "--rank", "2", "--alpha", "4", "--epochs", "2", "--lr", "0.01", "--seed", "7", "--local")
    assert result.stdout.startswith("Patch #1 added to support: trained on tiny v2, r 2, alpha 4")
    # Piped (not a terminal): progress as plain lines on stderr, not a bar nobody sees (issue 32).
    progress = result.stderr.splitlines()
    assert progress, result.stderr
    assert progress[0].startswith("Training support on tiny v2: ") and "epoch 1/2 loss " in progress[0], progress
    assert any("epoch 2/2" in line for line in progress)
    assert progress[-1].startswith("Training support on tiny v2: 100% epoch 2/2 loss ") and progress[-1].endswith(" s)")
    [patch] = registered.json("patch", "list")
    provenance = patch["provenance"]
    assert patch["origin_base"]["version"] == "v2"
    assert (provenance["kind"], provenance["examples"], provenance["seed"]) == ("train", len(FACTS), 7)
    assert {k: provenance["hyperparameters"][k] for k in ("rank", "alpha", "epochs", "lr")} == {
        "rank": 2, "alpha": 4.0, "epochs": 2, "lr": 0.01}
    assert patch["train_data_ref"] == f"sha256:{provenance['dataset_sha256']}"


def test_run_wait_exit_codes_follow_the_registry(registered, tiny_world, session_factory):
    from registry import services
    from registry.db import session_scope

    registered.ok("patch", "add", "support", tiny_world.adapter, "--base", "v1")
    with session_scope(session_factory) as s:
        run, _ = services.request_run(s, assistant="support", version="v2", idempotency_key="k1",
                                      requested_by="alice", channel="#support")
        run_id = run.id
    waited = registered("run", "wait", run_id, "--timeout", "0.3", "--interval", "0.1")
    assert waited.exit_code == 124 and f"Run #{run_id} is still queued" in waited.stderr

    with session_scope(session_factory) as s:  # what a worker does
        services.claim_run(s, run_id, "w1")
        services.finish_run(s, run_id, status="failed", error="base unreadable")
    failed = registered("run", "wait", run_id, "--timeout", "5")
    # Piped: where the run got to (plain progress lines), then how it ended, last.
    assert failed.exit_code == 1 and failed.stderr.strip().splitlines() == [
        f"Run #{run_id}: 0% failed (0 s)", f"Run #{run_id} failed: base unreadable"]
    shown = registered.json("run", "show", run_id)
    assert (shown["status"], shown["error"], shown["evaluations"], shown["rollout"]) == (
        "failed", "base unreadable", [], None)
    assert [r["id"] for r in registered.json("run", "list", "--assistant", "support", "--status", "failed")] == [run_id]
    assert "failed" in registered.ok("run", "show", run_id).stdout


def test_the_cli_starts_without_torch_or_the_engine():
    code = (
        "import sys, typer; from portllm_cli.admin import register; app = typer.Typer(); register(app); "
        "from typer.testing import CliRunner; assert CliRunner().invoke(app, ['--help']).exit_code == 0; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'safetensors', 'portllm_engine.models',"
        " 'portllm_engine.transplant') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_the_portllm_command_works_on_the_embedded_defaults(tmp_path, tiny_world):
    """The installed entry point (portllm_cli.main:main) with nothing configured but the data dir."""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PORTLLM_")}
    env.update(PORTLLM_DATA_DIR=str(tmp_path / "data"), PORTLLM_USER="ops")

    def portllm(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "portllm_cli.main", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    assert portllm("base", "list").stdout.strip() == "No base registered yet."  # no `db upgrade` needed
    assert portllm("db", "upgrade").returncode == 0  # still there, and a no-op
    added = portllm("base", "add", "tiny", "v1", tiny_world.v1)
    assert added.returncode == 0 and added.stdout.startswith("Base tiny v1 registered: llama"), added.stderr
    again = portllm("base", "add", "tiny", "v1", tiny_world.v1)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [again.stderr.strip()] and "already registered" in again.stderr
    [base] = json.loads(portllm("base", "list", "--json").stdout)
    assert base["version"] == "v1" and (tmp_path / "data" / "portllm.db").is_file()


def test_a_hub_id_is_registered_from_the_local_hub_cache(tmp_path, tiny_world):
    """`REF` as `org/name`: resolved offline from the HF cache, and stored as the hub id (not a path)."""
    import shutil

    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    revision = "0" * 40
    shutil.copytree(tiny_world.v1, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PORTLLM_")}
    env.update(PORTLLM_DATA_DIR=str(tmp_path / "data"), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")

    def portllm(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "portllm_cli.main", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    assert portllm("db", "upgrade").returncode == 0
    added = portllm("base", "add", "tiny", "v1", "acme/tiny-llama")
    assert added.returncode == 0, added.stderr
    missing = portllm("base", "add", "tiny", "v2", "acme/not-cached")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        "error: model 'acme/not-cached' not found: it is not in the local HF cache (HF_HUB_OFFLINE is set)")
    [base] = json.loads(portllm("base", "list", "--json").stdout)
    assert base["source_ref"] == "acme/tiny-llama"


def test_a_gguf_file_is_dequantized_into_the_data_dir_and_another_architecture_refused(cli, tmp_path):
    """`base add FAMILY VERSION file.gguf`: SmolLM2 from its PyPI package, registered from a safetensors
    folder in the data dir, with the file's sha256 and quantization; Gemma 3 into its family is refused."""
    from portllm_engine import gguf
    from tests.engine.test_gguf import require_real

    require_real()
    cli.ok("base", "add", "smollm2", "v1", gguf.smollm2_gguf())
    (base,) = cli.json("base", "list", "smollm2")
    folder = cli.data_dir / "models" / "smollm2" / "v1"
    assert base["source_ref"] == str(folder) and (folder / "model.safetensors").is_file()
    assert gguf.PINNED_SHA256[gguf.SMOLLM2_FILE] in base["description"] and "Q4_1" in base["description"]
    assert base["signature"]["model_type"] == "llama"
    refused = cli("base", "add", "smollm2", "gemma", gguf.gemma3_gguf(tmp_path))
    assert refused.exit_code != 0
    refusal = next(line for line in refused.output.splitlines() if "error" in line)  # past transformers' bars
    assert "smollm2 gemma is not the architecture of family smollm2" in refusal
    assert "model_type llama → gemma3" in refused.output
    assert [b["version"] for b in cli.json("base", "list", "smollm2")] == ["v1"]
