from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from portllm_core import blocks
from portllm_core.commands.replies import Reply
from portllm_core.ids import Action, Block
from registry.services.ratings import Satisfaction
from portllm_core.views import (
    GuardProposal,
    KpiRow,
    LineagePatch,
    LineageRun,
    LineageView,
    LiveRow,
    PendingRow,
    ReleaseRow,
    ReleaseView,
    RunCard,
    StatusView,
    Table,
)

BLOCK_IDS = {b.value for b in Block}
ACTION_IDS = {a.value for a in Action}
TYPES = {"header", "section", "context", "actions", "divider"}


def assert_valid(message_blocks: list[dict]) -> None:
    """Structure and limits Slack enforces (it rejects the whole message otherwise)."""
    json.dumps(message_blocks)
    assert 0 < len(message_blocks) <= blocks.MAX_BLOCKS
    seen = set()
    for block in message_blocks:
        assert block["type"] in TYPES
        block_id = block["block_id"]
        assert block_id not in seen, f"duplicate block_id {block_id}"
        seen.add(block_id)
        assert any(block_id == b or block_id.startswith(b + "_") for b in BLOCK_IDS), block_id
        assert len(block_id) <= 255
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= blocks.MAX_HEADER_TEXT
        if block["type"] == "section":
            assert block["text"]["type"] == "mrkdwn"
            assert 0 < len(block["text"]["text"]) <= blocks.MAX_SECTION_TEXT
        if block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
            assert all(0 < len(e["text"]) <= blocks.MAX_CONTEXT_TEXT for e in block["elements"])
        if block["type"] == "actions":
            assert 0 < len(block["elements"]) <= 25
            for element in block["elements"]:
                assert element["action_id"] in ACTION_IDS
                assert 0 < len(element["text"]["text"]) <= blocks.MAX_BUTTON_TEXT
                assert len(element["value"]) <= 2000
                if "confirm" in element:
                    confirm = element["confirm"]
                    assert len(confirm["title"]["text"]) <= 100
                    assert len(confirm["text"]["text"]) <= blocks.MAX_CONFIRM_TEXT
                    assert len(confirm["confirm"]["text"]) <= 30 and len(confirm["deny"]["text"]) <= 30


def card(**overrides) -> RunCard:
    values = dict(
        run_id=12, kind="transplant", assistant="support-assistant", family="demo", origin_version="v1",
        target_version="v2", status="succeeded", progress=1.0, step="done", requested_by="U0ALICE",
        channel="C0SUPPORT",
        kpi=(KpiRow("candidate", 0.76, 0.66, 0.84, 50), KpiRow("target base alone", 0.17, 0.1, 0.3, 50),
             KpiRow("live (v1)", 0.92)),
        drift_overall=0.28, drift_modules=(("layers.0.q_proj", 0.31),), verdict="pass",
        gate="needs ≥ 50%", rollout_state="awaiting_approval",
    )
    values.update(overrides)
    return RunCard(**values)


def ids(message_blocks):
    return [b["block_id"] for b in message_blocks]


def actions(message_blocks):
    return [e["action_id"] for b in message_blocks if b["type"] == "actions" for e in b["elements"]]


def test_running_card_shows_a_progress_bar_and_no_buttons():
    out = blocks.run_card_blocks(card(status="running", progress=0.4, step="evaluating candidate", kpi=(),
                                      drift_overall=None, verdict=None, rollout_state=None))
    assert_valid(out)
    progress = next(b for b in out if b["block_id"] == Block.RUN_PROGRESS)
    assert "▓" * 8 + "░" * 12 in progress["text"]["text"] and "40%" in progress["text"]["text"]
    assert actions(out) == []


def test_awaiting_card_has_kpi_drift_verdict_and_confirmed_buttons():
    out = blocks.run_card_blocks(card())
    assert_valid(out)
    assert ids(out) == [Block.RUN_HEADER, Block.RUN_SUMMARY, Block.RUN_KPI, Block.RUN_DRIFT, Block.RUN_VERDICT,
                        Block.RUN_ACTIONS]
    kpi = next(b for b in out if b["block_id"] == Block.RUN_KPI)["text"]["text"]
    for subject in ("candidate", "target base alone", "live (v1)"):
        assert subject in kpi
    buttons = next(b for b in out if b["type"] == "actions")["elements"]
    assert [b["action_id"] for b in buttons] == [Action.APPROVE, Action.REJECT]
    assert all(b["value"] == "12" and "confirm" in b for b in buttons)
    assert "<@U0ALICE>" in out[1]["text"]["text"] and "<#C0SUPPORT>" in out[1]["text"]["text"]


def test_a_decision_replaces_the_buttons_with_the_outcome():
    out = blocks.run_card_blocks(card(rollout_state="live", decided_by="U0BOB"))
    assert_valid(out)
    assert actions(out) == []
    assert "Approved by <@U0BOB>" in out[-1]["elements"][0]["text"]
    rejected = blocks.run_card_blocks(card(rollout_state="rejected", decided_by="bob", decision_reason="drift"))
    assert "Rejected by bob: drift" in rejected[-1]["elements"][0]["text"]


def test_a_failed_gate_offers_reject_and_retune_but_not_approve():
    out = blocks.run_card_blocks(card(verdict="fail", rollout_state="blocked", can_retune=True))
    assert_valid(out)
    assert actions(out) == [Action.REJECT, Action.RETUNE]


def test_incompatible_run_lists_the_errors():
    out = blocks.run_card_blocks(card(status="failed", kpi=(), drift_overall=None, verdict=None, rollout_state=None,
                                      compat_errors=("hidden size 128 vs 256",), error="not compatible"))
    assert_valid(out)
    assert "hidden size 128 vs 256" in next(b for b in out if b["block_id"] == Block.RUN_COMPAT)["text"]["text"]


def test_an_incompatible_run_says_the_reason_first():
    out = blocks.run_card_blocks(card(status="failed", kpi=(), drift_overall=None, verdict=None, rollout_state=None,
                                      compat_errors=("model_type llama → gemma3_text", "the base lacks 210 modules"),
                                      error="not compatible"))
    text = next(b for b in out if b["block_id"] == Block.RUN_COMPAT)["text"]["text"]
    assert text == "*Not compatible:* model_type llama → gemma3_text\n• the base lacks 210 modules"


def test_user_text_is_escaped():
    out = blocks.reply_blocks(Reply("<!channel> & <https://evil|x>"))
    assert out[0]["text"]["text"] == "&lt;!channel&gt; &amp; &lt;https://evil|x&gt;"


def test_long_content_stays_within_limits():
    long = "x" * 10_000
    assert_valid(blocks.run_card_blocks(card(assistant=long, target_version=long, step=long, error=long,
                                             compat_errors=(long,) * 50, drift_modules=((long, 1.0),) * 50,
                                             kpi=(KpiRow(long, 0.5),) * 500, gate=long, status="running",
                                             decision_reason=long)))
    status = StatusView(None, tuple(LiveRow(f"a{i}", "#c", "v1", i, 0.5) for i in range(500)),
                        tuple(PendingRow(i, long, "v2", "running", 0.3, None, None) for i in range(500)))
    assert_valid(blocks.status_blocks(status))
    assert_valid(blocks.home_view(status)["blocks"])
    runs = tuple(LineageRun(i, "transplant", "v2", "succeeded", "pass", 0.5, "live", "#c", "bob") for i in range(300))
    lineage = LineageView("a", "demo", tuple(LineagePatch(i, "v1", 8, None, long, runs) for i in range(200)))
    assert_valid(blocks.lineage_blocks(lineage))
    assert_valid(blocks.table_blocks(Table("t", ("a", "b"), tuple((long, long) for _ in range(100)))))


def test_home_and_status_show_live_and_waiting():
    view = StatusView(None, (LiveRow("support-assistant", "#support", "v1", 3, 0.92),),
                      (PendingRow(12, "support-assistant", "v2", "succeeded", 1.0, "awaiting_approval", "pass"),))
    home = blocks.home_view(view)
    assert home["type"] == "home"
    assert_valid(home["blocks"])
    text = json.dumps(home)
    assert "#12" in text and "awaiting approval" in text and "92.0%" in text


def test_status_says_which_assistants_vllm_refused_and_why_escaped():
    refused = "vLLM refused patch patch-2 (500): LoRA rank 128 is greater than max_lora_rank 64 <!channel>"
    view = StatusView(None, (LiveRow("support-assistant", "#ops", "v2", 4, 0.9, None, refused),
                             LiveRow("support-assistant", "#support", "v2", 3, 0.9)), ())
    shown = blocks.status_blocks(view)
    assert_valid(shown)
    text = json.dumps(shown)
    assert "support-assistant in #ops is answered by the local backend" in text
    assert "greater than max_lora_rank 64 &lt;!channel&gt;" in text and "#support is answered" not in text
    long = LiveRow("a", "#c", "v2", 1, 0.5, None, "x" * 5000)
    assert_valid(blocks.status_blocks(StatusView(None, (long,) * 10, ())))


@settings(max_examples=150, deadline=None)
@given(st.text(), st.text(), st.floats(min_value=-1, max_value=2), st.sampled_from(
    [None, "awaiting_approval", "blocked", "live", "superseded", "rolled_back", "rejected"]),
    st.sampled_from(["queued", "running", "succeeded", "failed"]))
def test_any_card_is_valid(text, other, progress, rollout_state, status):
    out = blocks.run_card_blocks(card(assistant=text or "a", target_version=other or "v", step=text, status=status,
                                      progress=progress, rollout_state=rollout_state, requested_by=other,
                                      decided_by=text, decision_reason=other, error=text or None))
    assert_valid(out)
    assert blocks.reply_blocks(Reply(text or "x"))[0]["text"]["text"]


def test_a_train_run_card_names_the_base_it_trains_on_and_the_patch_it_produced():
    from rich.console import Console

    from portllm_cli import terminal

    train = dict(kind="train", origin_version=None, kpi=(), drift_overall=None, drift_modules=(), verdict=None,
                 gate="", rollout_state=None)
    running = card(**train, status="running", progress=0.4, step="training the patch 1/2", result_patch_id=None)
    out = blocks.run_card_blocks(running)
    assert_valid(out)
    assert [b["block_id"] for b in out] == [Block.RUN_HEADER, Block.RUN_SUMMARY, Block.RUN_PROGRESS]
    assert "*Training* of a new *support-assistant* patch on *v2* · running" in out[1]["text"]["text"]
    done = card(**train, result_patch_id=7)
    out = blocks.run_card_blocks(done)
    assert_valid(out)
    assert "succeeded · produced patch #7" in out[1]["text"]["text"]
    console = Console(width=200, record=True)
    console.print(terminal.run_card(done))
    assert "training of a new support-assistant patch on v2 · succeeded · produced patch #7" in console.export_text()


def test_a_retired_proposal_names_the_run_that_replaced_it_and_offers_no_buttons():
    retired = card(rollout_state="superseded_by_newer", verdict="pass", replaced_by_run=7)
    message = blocks.run_card_blocks(retired)
    assert_valid(message)
    assert "Replaced by run #7" in json.dumps(message) and "decide that one" in json.dumps(message)
    assert actions(message) == []


def test_an_inconclusive_gate_offers_the_re_tune_next_to_approve_and_reject():
    message = blocks.run_card_blocks(card(verdict="inconclusive", rollout_state="awaiting_approval", can_retune=True))
    assert_valid(message)
    assert actions(message) == [Action.APPROVE, Action.REJECT, Action.RETUNE]


def test_the_card_says_which_test_decided_each_stage_and_escapes_it():
    reasons = ("Quick suite, on its own score: inconclusive. The candidate scored 0% <b>",
               "Full suite, item by item against live: pass. On the same 40 questions …")
    message = blocks.run_card_blocks(card(gate_reasons=reasons))
    assert_valid(message)
    [gate] = [b for b in message if b["block_id"] == Block.RUN_GATE]
    text = gate["elements"][0]["text"]
    assert "item by item against live: pass" in text and "&lt;b&gt;" in text and "<b>" not in text


def test_live_satisfaction_shows_in_home_status_and_the_card():
    score = Satisfaction(people=5, ratings=9, up=4.0)
    view = StatusView(None, (LiveRow("support-assistant", "#support", "v2", 3, 0.9, score),), ())
    assert_valid(blocks.home_view(view)["blocks"])
    assert "80% 👍 (38–96%) from 5 people, 9 ratings" in json.dumps(blocks.home_view(view), ensure_ascii=False)
    assert blocks.satisfaction_text(None) == "–" and blocks.satisfaction_text(Satisfaction(0, 0, 0.0)) == "–"
    assert blocks.satisfaction_text(Satisfaction(1, 1, 0.0)).endswith("from 1 person, 1 rating")
    out = blocks.run_card_blocks(card(live_satisfaction=score))
    assert_valid(out)
    assert any(b["block_id"] == Block.RUN_LIVE_KPI and "5 people" in b["elements"][0]["text"] for b in out)


def test_the_guard_card_rolls_back_in_one_click_or_says_there_is_nothing_to_roll_back_to():
    proposal = GuardProposal("support-assistant", "#support", "v3", "v2", Satisfaction(10, 12, 3.0), 10, 0.7)
    out = blocks.guard_blocks(proposal)
    assert_valid(out)
    [button] = out[1]["elements"]
    assert (button["action_id"], button["value"]) == (Action.ROLLBACK, "support-assistant")
    assert "Roll back to v2" in button["text"]["text"] and "confirm" in button
    first = blocks.guard_blocks(GuardProposal("support-assistant", "#support", "v1", None, Satisfaction(10, 12, 3.0), 10, 0.7))
    assert_valid(first)
    assert all(b["type"] != "actions" for b in first) and "Nothing to roll back to" in json.dumps(first)


def test_release_summary_and_offer_cards():
    view = ReleaseView(4, "demo", "v3", "ops", (
        ReleaseRow("support-assistant", "#support", 12, "succeeded", "fail", "blocked"),
        ReleaseRow("style-assistant", "#style", None, None, None, None)))
    out = blocks.release_blocks(view)
    assert_valid(out)
    text = json.dumps(out)
    assert "#12" in text and "blocked by the gate" in text and "offered" in text
    offer = blocks.offer_blocks(4, "v3", "style-assistant", "#style")
    assert_valid(offer)
    assert offer[1]["elements"][0]["value"] == "4:style-assistant"


def test_escape_drops_bidi_controls_and_keeps_the_marks_right_to_left_text_needs():
    assert blocks.escape("\u202eevil\u202c <b> \u2066x\u2069") == "evil &lt;b&gt; x"
    assert blocks.escape("שלום\u200f!") == "שלום\u200f!"  # RLM is a mark, not an override
