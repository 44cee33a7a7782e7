"""The operator's whole story on a real worker: register, request a transplant in the console,
wait for it from the CLI, read it back as JSON, approve it, and see it live."""
from __future__ import annotations

import io


def console(*lines: str, user: str = "alice") -> tuple[int, str]:
    from portllm_cli.console import run_console

    out = io.StringIO()
    code = run_console("#support", user, io.StringIO("".join(line + "\n" for line in lines)), out, wait_s=180)
    return code, out.getvalue()


def test_a_peft_adapter_goes_from_registration_to_live_through_the_cli_and_the_console(registered, tiny_world, worker):
    cli = registered
    cli.ok("patch", "add", "support", tiny_world.adapter, "--base", "v1", "--train-data", tiny_world.train_data)

    code, replies = console("patch support onto v2")
    assert code == 0, replies
    assert "#1" in replies

    waited = cli("run", "wait", "1", "--timeout", "180")
    assert waited.exit_code == 0, (waited.stdout, waited.stderr, worker.text()[-3000:])
    assert waited.stdout.strip() == "Run #1 succeeded: gate pass, rollout awaiting approval"
    shown = cli.ok("run", "show", "1").stdout
    assert "gate pass" in shown and "compatible" in shown and "approve 1" in shown

    run = cli.json("run", "show", "1")
    assert (run["status"], run["kind"], run["assistant"], run["requested_by"], run["channel"]) == (
        "succeeded", "transplant", "support", "console:alice", "#support")  # audited as the console
    assert run["origin_base"]["version"] == "v1" and run["target_base"]["version"] == "v2"
    assert run["progress"] == 1.0
    assert run["compat_report"]["compatible"] is True
    assert 0 < run["drift_report"]["overall"] < 1
    evaluations = {e["subject"]: e for e in run["evaluations"]}
    assert sorted(evaluations) == ["candidate", "target_base"]
    for evaluation in evaluations.values():
        low, high = evaluation["ci95"]
        assert evaluation["n"] == 8 and low <= evaluation["accuracy"] <= high
    assert (run["verdict"], run["rollout"]["state"]) == ("pass", "awaiting_approval")  # the gate's floor is 0

    lineage = cli.json("lineage", "support")
    [patch] = lineage["patches"]
    assert patch["origin_base"]["version"] == "v1" and patch["provenance"]["kind"] == "import"
    [carried] = patch["runs"]
    assert (carried["id"], carried["target_base"]["version"], carried["status"]) == (1, "v2", "succeeded")
    assert len(carried["evaluations"]) == 2

    code, replies = console("approve 1")
    assert code == 0, replies

    status = cli.json("status")
    [live] = status["live"]
    assert (live["assistant"], live["channel"], live["run_id"], live["base"], live["approved_by"]) == (
        "support", "#support", 1, "tiny/v2", "console:alice")
    assert status["awaiting_approval"] == [] and status["runs"] == []
    [rollout] = cli.json("lineage", "support")["patches"][0]["runs"][0]["rollouts"]
    assert (rollout["state"], rollout["decided_by"]) == ("live", "console:alice")
    assert "live" in cli.ok("status").stdout and "v2" in cli.ok("lineage", "support").stdout


def test_the_console_reports_a_refused_command_with_a_non_zero_exit(registered):
    code, replies = console("patch suport onto v2")
    assert code == 1 and "support" in replies
