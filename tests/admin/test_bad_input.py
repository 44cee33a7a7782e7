"""Bad input through every command: one line naming the problem, exit 2, no traceback, nothing written."""
from __future__ import annotations

import pytest

from tests.admin.tiny_world import TinyWorld

MISSING = "/nonexistent/portllm/path"

# (case id, argv built from the tiny world, words the one-line error must contain)
CASES = [
    ("base-path-missing", lambda w: ["base", "add", "tiny", "v9", MISSING], [MISSING, "not found"]),
    ("base-duplicate", lambda w: ["base", "add", "tiny", "v1", w.v2], ["v1", "already registered"]),
    ("base-pickled", lambda w: ["base", "add", "tiny", "v9", w.pickled], ["pytorch_model.bin", "pickled"]),
    ("base-remote-code", lambda w: ["base", "add", "tiny", "v9", w.remote_code], ["remote code"]),
    ("base-bad-name", lambda w: ["base", "add", "tiny", "v 9", w.v1], ["'v 9'", "not a valid name"]),
    ("base-list-unknown-family", lambda w: ["base", "list", "mistral"], ["unknown family", "mistral", "tiny"]),
    ("assistant-unknown-family", lambda w: ["assistant", "add", "helpdesk", "--family", "mistral", "--suite", w.suite],
     ["unknown family", "mistral"]),
    ("assistant-duplicate", lambda w: ["assistant", "add", "support", "--family", "tiny", "--suite", w.suite],
     ["support", "already exists"]),
    ("assistant-suite-line-7", lambda w: ["assistant", "add", "helpdesk", "--family", "tiny", "--suite", w.bad_suite],
     ["bad-suite.jsonl", "line 7", "JSON"]),
    ("assistant-suite-missing", lambda w: ["assistant", "add", "helpdesk", "--family", "tiny", "--suite", MISSING],
     [MISSING, "does not exist"]),
    ("assistant-gate-range", lambda w: ["assistant", "add", "helpdesk", "--family", "tiny", "--suite", w.suite,
                                        "--min-accuracy", "1.5"], ["--min-accuracy", "between 0 and 1"]),
    ("assistant-set-unknown", lambda w: ["assistant", "set", "suport", "--min-accuracy", "0.6"],
     ["Unknown assistant", "support"]),
    ("assistant-set-nothing", lambda w: ["assistant", "set", "support"], ["nothing to change"]),
    ("assistant-set-suite-line-7", lambda w: ["assistant", "set", "support", "--suite", w.bad_suite], ["line 7"]),
    ("assistant-set-remove-stranger", lambda w: ["assistant", "set", "support", "--remove-approver", "mallory"],
     ["mallory", "not an approver"]),
    ("patch-unknown-assistant", lambda w: ["patch", "add", "suport", w.adapter, "--base", "v1"],
     ["Unknown assistant", "support"]),
    ("patch-unknown-version", lambda w: ["patch", "add", "support", w.adapter, "--base", "v9"],
     ["Unknown base version", "v9"]),
    ("patch-path-missing", lambda w: ["patch", "add", "support", MISSING, "--base", "v1"], [MISSING, "does not exist"]),
    ("patch-shapes-do-not-fit", lambda w: ["patch", "add", "support", w.adapter_other, "--base", "v1"],
     ["does not fit tiny v1: ", "modules of another shape on the base (patch → base): ", "24×24 → "]),
    ("patch-pickled", lambda w: ["patch", "add", "support", w.adapter_pickled, "--base", "v1"],
     ["adapter_model.bin", "pickled"]),
    ("patch-not-an-adapter", lambda w: ["patch", "add", "support", w.v1, "--base", "v1"],
     ["neither a PortLLM patch", "PEFT folder"]),
    ("patch-train-data-bad-line", lambda w: ["patch", "add", "support", w.adapter, "--base", "v1",
                                             "--train-data", w.suite], ["suite.jsonl line 1", "prompt", "completion"]),
    ("patch-train-data-missing", lambda w: ["patch", "add", "support", w.adapter, "--base", "v1",
                                            "--train-data", MISSING], [MISSING, "does not exist"]),
    ("train-unknown-version", lambda w: ["patch", "train", "support", "--base", "v9", "--data", w.train_data, "--local"],
     ["Unknown base version", "v9"]),
    ("train-data-missing", lambda w: ["patch", "train", "support", "--base", "v1", "--data", MISSING, "--local"],
     [MISSING, "does not exist"]),
    ("export-unknown-patch", lambda w: ["patch", "export", "42", MISSING], ["no patch #42"]),
    ("export-into-non-empty", lambda w: ["patch", "export", "42", w.v1], ["not an empty folder"]),
    ("run-show-unknown", lambda w: ["run", "show", "99"], ["no run #99"]),
    ("run-wait-unknown", lambda w: ["run", "wait", "99", "--timeout", "1"], ["no run #99"]),
    ("run-list-unknown-assistant", lambda w: ["run", "list", "--assistant", "suport"], ["Unknown assistant"]),
    ("run-list-unknown-status", lambda w: ["run", "list", "--status", "done"], ["unknown status", "succeeded"]),
    ("lineage-unknown", lambda w: ["lineage", "suport"], ["Unknown assistant", "support"]),
    ("status-unknown", lambda w: ["status", "suport"], ["Unknown assistant", "support"]),
]


def assert_refused(result, words: list[str]) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_writes_nothing(registered, tiny_world: TinyWorld, argv, words):
    before = registered.snapshot()
    assert_refused(registered(*argv(tiny_world)), words)
    assert registered.snapshot() == before


def test_a_portllm_patch_is_refused_on_a_base_it_was_not_trained_on(registered, tiny_world, tmp_path):
    registered.ok("patch", "add", "support", tiny_world.adapter, "--base", "v1")
    registered.ok("patch", "export", "1", tmp_path / "exported")
    before = registered.snapshot()
    result = registered("patch", "add", "support", tmp_path / "exported", "--base", "v2")
    assert_refused(result, ["trained on a base with fingerprint", "tiny v2", "that is tiny v1"])
    assert registered.snapshot() == before


def test_a_failed_registry_write_leaves_no_artifact_behind(registered, tiny_world, monkeypatch):
    """The DB step fails after the artifacts were stored: the ones this command added are removed."""
    import registry.services

    def broken(*args, **kwargs):
        raise registry.services.RegistryError("the registry refused the write")

    monkeypatch.setattr(registry.services, "register_patch", broken)
    before = registered.snapshot()
    result = registered("patch", "add", "support", tiny_world.adapter, "--base", "v1", "--train-data", tiny_world.train_data)
    assert_refused(result, ["refused the write"])
    assert registered.snapshot() == before


def test_commands_on_an_unmigrated_database_say_what_to_run(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTLLM_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    result = cli("base", "list")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: the registry database has no tables yet; run `portllm db upgrade` first"
