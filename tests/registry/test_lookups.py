"""Lookups by an id a person typed: any integer reads as a run that exists or "no run #N"."""
from __future__ import annotations

import pytest

from registry import services as sv
from registry.db import session_scope
from registry.errors import UnknownPatch, UnknownRun
from tests.registry.helpers import proposed, seed


@pytest.mark.parametrize("run_id", [0, -1, 2**31, 3_000_000_000, 2**63, 2**70])
def test_ids_no_row_can_have_read_as_unknown_runs(session_factory, run_id):
    # `approve 3000000000` once failed inside PostgreSQL (int4) and SQLite's driver (int64).
    with session_scope(session_factory) as s:
        seed(s)
        rollout = proposed(s, "v2")
    with session_scope(session_factory) as s:
        for lookup in (lambda: sv.get_run(s, run_id),
                       lambda: sv.decide_rollout(s, run_id, approve=True, user="alice"),
                       lambda: sv.cancel_run(s, run_id, user="alice")):
            with pytest.raises(UnknownRun) as exc:
                lookup()
            assert str(exc.value) == f"There is no run #{run_id}. `status` lists the current runs."
        # the transaction is still usable afterwards
        assert sv.get_run(s, rollout.run_id).id == rollout.run_id


@pytest.mark.parametrize("patch_id", [0, 2**31, 2**70])
def test_patch_ids_no_row_can_have_read_as_unknown_patches(session_factory, patch_id):
    with session_scope(session_factory) as s:
        seed(s)
    with session_scope(session_factory) as s:
        with pytest.raises(UnknownPatch, match=f"no patch #{patch_id}"):
            sv.get_patch(s, patch_id)
