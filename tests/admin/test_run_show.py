"""`portllm run show`: long lines wrap inside the card, and a cut listing names the flag that lists it all."""
from __future__ import annotations

from registry import services
from registry.db import session_scope


def _failed_run(session_factory, key: str, **finished) -> int:
    with session_scope(session_factory) as s:
        run, _ = services.request_run(s, assistant="support", version="other", idempotency_key=key,
                                      requested_by="alice", channel="#support")
        services.claim_run(s, run.id, "w1")
        services.finish_run(s, run.id, status="failed", **finished)
        return run.id


def _words(shown: str) -> str:
    """The card's text with its frame and line breaks taken out."""
    return " ".join(shown.replace("│", " ").split())


def test_a_long_error_wraps_inside_the_card_instead_of_being_cut(registered, tiny_world, session_factory):
    registered.ok("patch", "add", "support", tiny_world.adapter, "--base", "v1")
    error = "the worker stopped: " + " ".join(f"reason-{i}" for i in range(40)) + " end-of-the-error"
    run_id = _failed_run(session_factory, "long", error=error)
    shown = registered.ok("run", "show", run_id).stdout
    assert max(len(line) for line in shown.splitlines()) <= 80  # piped: rich's 80 columns
    assert f"failed: {error}" in _words(shown)


def test_a_cut_compatibility_listing_names_the_flag_that_lists_it_all(registered, tiny_world, session_factory):
    registered.ok("patch", "add", "support", tiny_world.adapter, "--base", "v1")
    errors = [{"code": "missing_module", "message": f"the base has no module model.layers.{i}.mlp.up_proj",
               "module": f"model.layers.{i}.mlp.up_proj"} for i in range(12)]
    run_id = _failed_run(session_factory, "compat", error="does not fit",
                         compat_report={"compatible": False, "errors": errors, "warnings": []})
    cut = _words(registered.ok("run", "show", run_id).stdout)
    # The reason first, the modules bounded, and the command that lists every problem.
    assert ("not compatible: the base lacks 12 modules the patch adapts: model.layers.0.mlp.up_proj, "
            "model.layers.1.mlp.up_proj, model.layers.2.mlp.up_proj and 9 more") in cut
    assert f"(`portllm run show {run_id} --all` lists all 12 problems)" in cut
    assert "model.layers.11.mlp.up_proj" not in cut
    every = _words(registered.ok("run", "show", run_id, "--all").stdout)
    assert all(f"the base has no module model.layers.{i}.mlp.up_proj" in every for i in range(12))
    assert "lists all" not in every
