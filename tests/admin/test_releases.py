"""`portllm base watch`, `base add` and `release show`: a new version reaches the live channels once."""
from __future__ import annotations

import shutil

from sqlalchemy import func, select

from registry import services
from registry.db import session_scope
from registry.models import Run
from tests.admin.tiny_world import new_version_of


def live_on_v1(cli, tiny_world, session_factory, channel: str = "#support") -> None:
    cli.ok("patch", "add", "support", tiny_world.adapter, "--base", "v1")
    with session_scope(session_factory) as s:
        run, _ = services.request_run(s, assistant="support", version="v1", idempotency_key="live-v1",
                                      requested_by="alice", channel=channel)
        services.claim_run(s, run.id, "w")
        services.finish_run(s, run.id, status="succeeded")
        services.open_rollout(s, run.id, verdict="pass")
        services.decide_rollout(s, run.id, approve=True, user="alice")


def runs(session_factory) -> int:
    with session_factory() as s:
        return s.scalar(select(func.count(Run.id)))


def test_watch_registers_new_version_folders_once_and_each_release_queues_its_run(
        registered, tiny_world, session_factory, tmp_path):
    live_on_v1(registered, tiny_world, session_factory)
    store = tmp_path / "store"
    store.mkdir()
    new_version_of(tiny_world.v2, store / "v3")
    (store / "notes").mkdir()  # not a model folder: ignored
    before = runs(session_factory)

    first = registered.ok("base", "watch", "tiny", store, "--once").stdout
    assert "Base tiny v3 registered" in first and "queued: support in #support" in first
    assert runs(session_factory) == before + 1
    second = registered.ok("base", "watch", "tiny", store, "--once").stdout
    assert second == "" and runs(session_factory) == before + 1

    summary = registered.json("release", "show", "tiny", "v3")
    [run] = summary["runs"]
    assert (run["assistant"], run["channel"], run["status"]) == ("support", "#support", "queued")
    assert summary["offers"] == [] and summary["base"] == {"family": "tiny", "version": "v3"}
    again = registered.ok("release", "start", "tiny", "v3").stdout
    assert "was started before; nothing new queued" in again and runs(session_factory) == before + 1


def test_ask_policy_offers_instead_of_queueing_and_off_does_nothing(registered, tiny_world, session_factory, tmp_path):
    live_on_v1(registered, tiny_world, session_factory)
    registered.ok("assistant", "set", "support", "--on-release", "ask")
    out = registered.ok("base", "add", "tiny", "v3", new_version_of(tiny_world.v2, tmp_path / "v3")).stdout
    assert "offered to support in #support (its policy is `ask`)" in out
    assert registered.json("release", "show", "tiny", "v3")["offers"] == [{"assistant": "support", "channel": "#support"}]
    registered.ok("assistant", "set", "support", "--on-release", "off")
    before = runs(session_factory)
    v4 = new_version_of(tiny_world.v2, tmp_path / "v4")
    assert "no assistant is live" in registered.ok("base", "add", "tiny", "v4", v4).stdout
    assert runs(session_factory) == before


def test_bad_policy_and_guard_say_what_would_be_right(registered):
    bad = registered("assistant", "set", "support", "--on-release", "sometimes")
    assert bad.exit_code == 2 and "auto queues the runs, ask posts a card" in bad.stderr
    guard = registered("assistant", "set", "support", "--live-guard", "20")
    assert guard.exit_code == 2 and "like 20:0.7" in guard.stderr
    registered.ok("assistant", "set", "support", "--live-guard", "20:70%")
    [assistant] = registered.json("assistant", "list")
    assert assistant["live_guard"] == {"min_ratings": 20, "min_satisfaction": 0.7}
    quiet = registered.ok("release", "show", "tiny", "v1").stdout  # every registered base has its release
    assert "no assistant is live on this family" in quiet


def test_watch_refuses_version_folders_and_files_that_lead_outside_the_store(
        registered, tiny_world, session_factory, tmp_path):
    """Issue 20: `store/v-link -> /elsewhere/model` was registered and released."""
    live_on_v1(registered, tiny_world, session_factory)
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    shutil.copytree(tiny_world.v2, elsewhere / "model")
    (store / "v-link").symlink_to(elsewhere / "model", target_is_directory=True)
    inside_out = store / "v-file-link"  # a real folder whose weights are a link out of the store
    inside_out.mkdir()
    for item in (elsewhere / "model").iterdir():
        (inside_out / item.name).symlink_to(item) if item.suffix == ".safetensors" else shutil.copy(item, inside_out)
    looped = store / "v-loop"  # a folder holding a link to itself: refused, the watcher keeps going
    shutil.copytree(tiny_world.v2, looped)
    (looped / "loop").symlink_to(looped / "loop")
    before = runs(session_factory)

    result = registered("base", "watch", "tiny", store, "--once")
    assert result.exit_code == 0 and result.stdout == ""
    assert f"v-link: refused: {store / 'v-link'} leads to {(elsewhere / 'model').resolve()}, outside the model store" \
        in " ".join(result.stderr.split())
    assert "v-file-link: refused:" in result.stderr and ".safetensors leads to" in " ".join(result.stderr.split())
    assert "is a symlink loop" in " ".join(result.stderr.split())
    assert runs(session_factory) == before
    assert {b["version"] for b in registered.json("base", "list", "tiny")} == {"v1", "v2", "other"}


def test_the_same_weights_under_a_new_label_are_another_label_and_release_nothing(
        registered, tiny_world, session_factory, tmp_path):
    """Issue 20: `base add fam v3-copy` with v3's folder warned, then queued runs and cards again."""
    live_on_v1(registered, tiny_world, session_factory)
    before = runs(session_factory)
    out = registered.ok("base", "add", "tiny", "v2-copy", tiny_world.v2).stdout
    assert "tiny v2-copy has the same weights as tiny v2: registered as another label for them; no release, " \
           "nothing queued." in " ".join(out.split())
    store = tmp_path / "store"  # the watcher says the same of a link to a version inside the store
    store.mkdir()
    new_version_of(tiny_world.v2, store / "v3")
    (store / "v3-latest").symlink_to(store / "v3", target_is_directory=True)
    watched = " ".join(registered.ok("base", "watch", "tiny", store, "--once").stdout.split())
    assert "Base tiny v3 registered" in watched and "queued: support in #support" in watched
    assert "tiny v3-latest has the same weights as tiny v3: registered as another label" in watched
    assert runs(session_factory) == before + 1  # v3's one run; neither other label queued anything
    refused = registered("release", "start", "tiny", "v2-copy")
    assert refused.exit_code != 0 and "another label for them, so it releases nothing" in " ".join(
        (refused.stdout + refused.stderr).split())
    versions = {b["version"]: b["fingerprint"] for b in registered.json("base", "list", "tiny")}
    assert versions["v2-copy"] == versions["v2"] and versions["v3-latest"] == versions["v3"]


BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_run_show_neutralises_bidi_controls_in_what_people_typed(registered, tiny_world, session_factory):
    """Issue 20: a reason with U+202E (right-to-left override) showed reversed in cards and `run show`."""
    live_on_v1(registered, tiny_world, session_factory)
    with session_scope(session_factory) as s:
        run, _ = services.request_run(s, assistant="support", version="v2", idempotency_key="bidi",
                                      requested_by="console:\u202eecila", channel="#sup\u2066port\u2069")
        services.claim_run(s, run.id, "w")
        services.finish_run(s, run.id, status="succeeded")
        services.open_rollout(s, run.id, verdict="pass")
        services.decide_rollout(s, run.id, approve=False, user="alice", reason="\u202edesserper eb ot\u202c fine")
    shown = registered.ok("run", "show", run.id).stdout
    assert not set(BIDI_CONTROLS) & set(shown)
    shown = " ".join(shown.replace("│", " ").split())  # the card's panel wraps its lines
    assert "rejected by alice: desserper eb ot fine" in shown
    assert registered.json("run", "show", run.id)["rollout"]["reason"].startswith("\u202e")  # the record keeps it


def test_a_base_of_another_architecture_is_refused_and_nothing_is_registered(cli, tiny_world):
    """Issue 32: `base add` took Gemma 3 into the SmolLM2 family without a word; its release then queued a
    run that failed the compatibility check."""
    cli.ok("base", "add", "tiny", "v1", tiny_world.v1)
    before = cli.snapshot()
    refused = cli("base", "add", "tiny", "other", tiny_world.other)
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error: tiny other is not the architecture of family tiny (that of tiny v1): "
                           "hidden_size 16 → 24; 16 weight matrices of another shape: ")
    assert "nothing was registered or released" in line and "pass --force" in line
    assert cli.snapshot() == before
    assert [b["version"] for b in cli.json("base", "list", "tiny")] == ["v1"]
    cli.ok("base", "add", "other-family", "v1", tiny_world.other)  # a family of its own is fine


def test_a_forced_base_of_another_architecture_is_registered_and_releases_nothing(
        registered, tiny_world, session_factory, tmp_path):
    live_on_v1(registered, tiny_world, session_factory)
    before = runs(session_factory)
    forced = registered("base", "add", "tiny", "other-2", new_version_of(tiny_world.other, tmp_path / "o2"), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert forced.stderr.startswith("warning: tiny other-2 is not the architecture of its family (vs tiny v1: "
                                    "hidden_size 16 → 24;")
    out = " ".join(forced.stdout.split())
    assert "Base tiny other-2 registered" in out and "No release" in out and "nothing queued" in out
    assert "`portllm release start tiny other-2`" in out
    assert runs(session_factory) == before  # a release would have queued a run for #support, doomed to fail
    assert registered("release", "show", "tiny", "other-2").exit_code != 0
    with session_factory() as s:
        base = services.get_base(s, "tiny", "other-2")
        [event] = services.audit_events(s, entity_type="base", entity_id=base.id)
    assert event.details["forced_architecture"].startswith("vs tiny v1: hidden_size 16 → 24;")
