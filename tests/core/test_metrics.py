"""The metrics module keeps its promises: small label sets, and refusals sorted by reason."""
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from portllm_core import metrics
from registry.errors import (GateFailedNeedsAdmin, NotApprover, NotRequester, OwnRunUnderFourEyes, RateLimited,
                             RegistryError, UnknownRun, WrongChannel)

DEFINED = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]


def test_every_metric_is_labelled_only_by_assistant_channel_kind_status_verdict_or_reason():
    assert len(DEFINED) >= 13
    for metric in DEFINED:
        # Labelled, too: a metric without labels would hold a value from import on, before
        # multiprocess mode could be switched on (metrics.share_with_forked_processes).
        assert metric._labelnames and set(metric._labelnames) <= metrics.LABELS, metric._name


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("portllm_refusals_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("error, reason", [
    (NotApprover("U1", "a", ["U2"]), "permission"),
    (NotRequester("U1", "a", ["U2"]), "permission"),
    (OwnRunUnderFourEyes(1, "a"), "permission"),
    (GateFailedNeedsAdmin(1, "a", []), "permission"),
    (RateLimited("Your runs", 10, 3600, 60.0, "12:00"), "rate_limit"),
    (WrongChannel("Run #1", ["C1"], "approve it"), "channel_scope"),
    (UnknownRun(1), None),
    (RegistryError("anything else"), None),
])
def test_refusals_are_counted_by_reason_and_other_errors_are_not(error, reason):
    before = {r: refusals(r) for r in ("permission", "rate_limit", "channel_scope")}
    with pytest.raises(type(error)):
        with metrics.counting_refusals():
            raise error
    after = {r: refusals(r) for r in before}
    assert after == {r: before[r] + (r == reason) for r in before}
