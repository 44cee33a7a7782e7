"""Every Block Kit block_id and action_id the bot uses, in one place (listeners match on these)."""
from __future__ import annotations

from enum import StrEnum


class Block(StrEnum):
    RUN_HEADER = "portllm_run_header"
    RUN_SUMMARY = "portllm_run_summary"
    RUN_PROGRESS = "portllm_run_progress"
    RUN_KPI = "portllm_run_kpi"
    RUN_DRIFT = "portllm_run_drift"
    RUN_PROMPT_WARNING = "portllm_run_prompt_warning"
    RUN_COMPAT = "portllm_run_compat"
    RUN_VERDICT = "portllm_run_verdict"
    RUN_GATE = "portllm_run_gate"
    RUN_ERROR = "portllm_run_error"
    RUN_ACTIONS = "portllm_run_actions"
    RUN_OUTCOME = "portllm_run_outcome"
    STATUS_HEADER = "portllm_status_header"
    STATUS_ROW = "portllm_status_row"  # suffixed with the row index: block ids are unique per message
    LINEAGE_HEADER = "portllm_lineage_header"
    LINEAGE_PATCH = "portllm_lineage_patch"  # suffixed with the patch id
    LIST = "portllm_list"
    MESSAGE = "portllm_message"
    HOME_HEADER = "portllm_home_header"
    HOME_LIVE = "portllm_home_live"
    HOME_AWAITING = "portllm_home_awaiting"
    HOME_HELP = "portllm_home_help"
    RUN_LIVE_KPI = "portllm_run_live_kpi"
    GUARD = "portllm_guard"
    GUARD_ACTIONS = "portllm_guard_actions"
    RELEASE = "portllm_release"
    OFFER = "portllm_offer"
    OFFER_ACTIONS = "portllm_offer_actions"


class Action(StrEnum):
    APPROVE = "portllm_approve"
    REJECT = "portllm_reject"
    RETUNE = "portllm_retune"
    ROLLBACK = "portllm_rollback"  # value: the assistant; rolls back in the card's channel
    ACCEPT_OFFER = "portllm_accept_offer"  # value: "<release id>:<assistant>"
