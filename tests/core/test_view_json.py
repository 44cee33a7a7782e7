"""The `--json` shapes of `portllm status` and `portllm lineage`, pinned: scripts read them.

Keys and value types only (None where a field is empty in this history); values are tested
where the views are.
"""
from __future__ import annotations

import json

from portllm_core.views import lineage_view, status_view
from registry import services as sv
from registry.db import session_scope
from tests.registry.helpers import ASSISTANT, finished_run, live, proposed, register_patch, seed


JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean",
              type(None): "null"}


def shape(value, path: str = "", into: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
    """Every path in a JSON value (`[]`: any item of a list) and the types seen there."""
    into = {} if into is None else into
    into.setdefault(path, set()).add(JSON_TYPES[type(value)])
    if isinstance(value, dict):
        for key, item in value.items():
            shape(item, f"{path}.{key}", into)
    elif isinstance(value, list):
        for item in value:
            shape(item, f"{path}[]", into)
    return {key: sorted(types) for key, types in into.items()}


# Free-form objects (a patch's provenance, a score's metrics, an audit event's details) are
# pinned as objects; what is inside them is theirs.
FREE_FORM = (".provenance.", ".metrics.", ".details.")

STATUS = {
    '': ['object'],
    '.assistant': ['string'],
    '.live': ['array'],
    '.live[]': ['object'],
    '.live[].assistant': ['string'],
    '.live[].channel': ['string'],
    '.live[].rollout_id': ['integer'],
    '.live[].run_id': ['integer'],
    '.live[].base': ['string'],
    '.live[].patch_id': ['integer'],
    '.live[].accuracy': ['number'],
    '.live[].approved_by': ['string'],
    '.live[].live_since': ['string'],
    '.live[].satisfaction': ['object'],
    '.live[].satisfaction.people': ['integer'],
    '.live[].satisfaction.ratings': ['integer'],
    '.live[].satisfaction.up': ['number'],
    '.live[].satisfaction.rate': ['null'],
    '.live[].satisfaction.ci95': ['null'],
    '.live[].served_locally': ['null'],
    '.awaiting_approval': ['array'],
    '.awaiting_approval[]': ['object'],
    '.awaiting_approval[].assistant': ['string'],
    '.awaiting_approval[].channel': ['string'],
    '.awaiting_approval[].rollout_id': ['integer'],
    '.awaiting_approval[].run_id': ['integer'],
    '.awaiting_approval[].state': ['string'],
    '.awaiting_approval[].verdict': ['string'],
    '.awaiting_approval[].base': ['string'],
    '.awaiting_approval[].accuracy': ['number'],
    '.awaiting_approval[].live_accuracy': ['number'],
    '.awaiting_approval[].opened_at': ['string'],
    '.runs': ['array'],
    '.runs[]': ['object'],
    '.runs[].run_id': ['integer'],
    '.runs[].assistant': ['string'],
    '.runs[].kind': ['string'],
    '.runs[].status': ['string'],
    '.runs[].progress': ['number'],
    '.runs[].step': ['string'],
    '.runs[].base': ['string'],
    '.runs[].requested_by': ['string'],
    '.runs[].channel': ['string'],
    '.runs[].created_at': ['string'],
    '.runs[].started_at': ['null'],
}
LINEAGE = {
    '': ['object'],
    '.assistant': ['string'],
    '.family': ['string'],
    '.gate': ['object'],
    '.gate.min_accuracy': ['number'],
    '.gate.max_regression': ['number'],
    '.channel': ['null'],
    '.patches': ['array'],
    '.patches[]': ['object'],
    '.patches[].id': ['integer'],
    '.patches[].kind': ['string'],
    '.patches[].created_at': ['string'],
    '.patches[].created_by': ['string'],
    '.patches[].origin_base': ['object'],
    '.patches[].origin_base.id': ['integer'],
    '.patches[].origin_base.family': ['string'],
    '.patches[].origin_base.version': ['string'],
    '.patches[].origin_base.fingerprint': ['string'],
    '.patches[].origin_base.source_ref': ['string'],
    '.patches[].parent_patch_id': ['integer', 'null'],
    '.patches[].artifact_ref': ['string'],
    '.patches[].artifact_digest': ['string'],
    '.patches[].rank': ['integer'],
    '.patches[].alpha': ['number'],
    '.patches[].target_modules': ['array'],
    '.patches[].target_modules[]': ['string'],
    '.patches[].size_bytes': ['integer'],
    '.patches[].provenance': ['object'],
    '.patches[].train_data_ref': ['string'],
    '.patches[].runs': ['array'],
    '.patches[].runs[]': ['object'],
    '.patches[].runs[].id': ['integer'],
    '.patches[].runs[].kind': ['string'],
    '.patches[].runs[].status': ['string'],
    '.patches[].runs[].spec': ['null'],
    '.patches[].runs[].target_base': ['object'],
    '.patches[].runs[].target_base.id': ['integer'],
    '.patches[].runs[].target_base.family': ['string'],
    '.patches[].runs[].target_base.version': ['string'],
    '.patches[].runs[].target_base.fingerprint': ['string'],
    '.patches[].runs[].target_base.source_ref': ['string'],
    '.patches[].runs[].requested_by': ['string'],
    '.patches[].runs[].channel': ['string'],
    '.patches[].runs[].created_at': ['string'],
    '.patches[].runs[].started_at': ['null', 'string'],
    '.patches[].runs[].finished_at': ['null', 'string'],
    '.patches[].runs[].attempts': ['integer'],
    '.patches[].runs[].error': ['null'],
    '.patches[].runs[].compatible': ['boolean', 'null'],
    '.patches[].runs[].drift_overall': ['null', 'number'],
    '.patches[].runs[].result_patch_id': ['integer', 'null'],
    '.patches[].runs[].evaluations': ['array'],
    '.patches[].runs[].evaluations[]': ['object'],
    '.patches[].runs[].evaluations[].id': ['integer'],
    '.patches[].runs[].evaluations[].subject': ['string'],
    '.patches[].runs[].evaluations[].stage': ['string'],
    '.patches[].runs[].evaluations[].n': ['integer'],
    '.patches[].runs[].evaluations[].accuracy': ['number'],
    '.patches[].runs[].evaluations[].ci95': ['array'],
    '.patches[].runs[].evaluations[].ci95[]': ['number'],
    '.patches[].runs[].evaluations[].suite_digest': ['string'],
    '.patches[].runs[].evaluations[].metrics': ['object'],
    '.patches[].runs[].evaluations[].duration_s': ['number'],
    '.patches[].runs[].evaluations[].recorded_at': ['string'],
    '.patches[].runs[].evaluations[].reused_from_run': ['null'],
    '.patches[].runs[].rollouts': ['array'],
    '.patches[].runs[].rollouts[]': ['object'],
    '.patches[].runs[].rollouts[].id': ['integer'],
    '.patches[].runs[].rollouts[].channel': ['string'],
    '.patches[].runs[].rollouts[].state': ['string'],
    '.patches[].runs[].rollouts[].verdict': ['string'],
    '.patches[].runs[].rollouts[].accuracy': ['number'],
    '.patches[].runs[].rollouts[].live_accuracy': ['null', 'number'],
    '.patches[].runs[].rollouts[].decided_by': ['null', 'string'],
    '.patches[].runs[].rollouts[].decided_at': ['null', 'string'],
    '.patches[].runs[].rollouts[].reason': ['null'],
    '.patches[].runs[].rollouts[].opened_at': ['string'],
    '.patches[].runs[].rollouts[].live_since': ['null', 'string'],
    '.patches[].runs[].rollouts[].ended_at': ['null', 'string'],
    '.patches[].runs[].rollouts[].satisfaction': ['object'],
    '.patches[].runs[].rollouts[].satisfaction.people': ['integer'],
    '.patches[].runs[].rollouts[].satisfaction.ratings': ['integer'],
    '.patches[].runs[].rollouts[].satisfaction.up': ['number'],
    '.patches[].runs[].rollouts[].satisfaction.rate': ['null', 'number'],
    '.patches[].runs[].rollouts[].satisfaction.ci95': ['array', 'null'],
    '.patches[].runs[].rollouts[].replaced': ['null', 'object'],
    '.patches[].runs[].rollouts[].events': ['array'],
    '.patches[].runs[].rollouts[].events[]': ['object'],
    '.patches[].runs[].rollouts[].events[].at': ['string'],
    '.patches[].runs[].rollouts[].events[].action': ['string'],
    '.patches[].runs[].rollouts[].events[].actor': ['string'],
    '.patches[].runs[].rollouts[].events[].details': ['object'],
    '.patches[].runs[].rollouts[].satisfaction.ci95[]': ['number'],
    '.patches[].runs[].rollouts[].replaced.rollout_id': ['integer'],
    '.patches[].runs[].rollouts[].replaced.run_id': ['integer'],
    '.patches[].runs[].rollouts[].replaced.base': ['string'],
    '.patches[].runs[].rollouts[].replaced.state': ['string'],
}


def _history(s) -> None:
    """A rollback, a re-tune, a rated live rollout, one awaiting approval, one run queued."""
    seeded = seed(s)
    live(s, "v2")
    rated = live(s, "v3")
    sv.rate(s, sv.record_answer(s, rated, asked_by="bob", question="q"), user="bob", up=True)
    sv.rollback(s, ASSISTANT, "support", "alice", reason="wrong prices")
    retuned = register_patch(s, origin_base="v3", parent_patch=seeded.patch_id)
    finished_run(s, "v3", kind="retune", patch_id=seeded.patch_id, result_patch_id=retuned.id)
    proposed(s, "v3")
    sv.request_run(s, assistant=ASSISTANT, version="v1", idempotency_key="queued", requested_by="dave",
                   channel="support")


def _views(factory):
    with session_scope(factory) as s:
        _history(s)
    with session_scope(factory) as s:
        status = status_view(s, ASSISTANT).to_json()
        lineage = lineage_view(s, sv.get_assistant(s, ASSISTANT)).to_json()
    assert json.loads(json.dumps(status)) == status and json.loads(json.dumps(lineage)) == lineage
    return status, lineage


def _pinned(value) -> dict[str, list[str]]:
    return {path: types for path, types in shape(value).items() if not any(free in path for free in FREE_FORM)}


def test_status_and_lineage_json_keep_their_shapes(session_factory):
    status, lineage = _views(session_factory)
    assert _pinned(status) == STATUS
    assert _pinned(lineage) == LINEAGE
