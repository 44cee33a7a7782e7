from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portllm_core.commands.grammar import (
    USAGE,
    Approve,
    Ask,
    Assistants,
    Bases,
    Eval,
    Help,
    Lineage,
    ParseError,
    Patch,
    Rate,
    Reject,
    Retune,
    Rollback,
    Status,
    parse,
)

VALID = [
    ("patch support-assistant onto v2", Patch("support-assistant", "v2")),
    ("  PATCH   support-assistant   ONTO   v2  ", Patch("support-assistant", "v2")),
    ("Patch Support-Assistant Onto V2", Patch("Support-Assistant", "V2")),
    ("eval support-assistant on v3", Eval("support-assistant", "v3")),
    ("EVAL x ON y", Eval("x", "y")),
    ("approve 12", Approve(12)),
    ("approve #12", Approve(12)),
    ("approve run #12", Approve(12)),
    ("approve 12 gate is too strict for this release", Approve(12, "gate is too strict for this release")),
    ("reject 7", Reject(7)),
    ("reject #7   answers  are off", Reject(7, "answers  are off")),
    ("retune 3", Retune(3)),
    ("rate 7 up", Rate(7, True)),
    ("RATE #7 Down", Rate(7, False)),
    ("rate 7 👍", Rate(7, True)),
    ("RETUNE run #3", Retune(3)),
    ("rollback support-assistant", Rollback("support-assistant")),
    ("status", Status()),
    ("status support-assistant", Status("support-assistant")),
    ("lineage support-assistant", Lineage("support-assistant")),
    ("bases", Bases()),
    ("bases demo", Bases("demo")),
    ("assistants", Assistants()),
    ("ask support-assistant how do I reset\tthe  X200?", Ask("support-assistant", "how do I reset the X200?")),
    ("help", Help()),
    ("HELP me", Help()),
    ("/portllm status", Status()),
    ("<@U0BOT> status", Status()),
    ("\tstatus\n", Status()),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_parses(text, expected):
    assert parse(text) == expected


INVALID = [
    ("", "No command", "help"),
    ("   ", "No command", "help"),
    ("pach support-assistant onto v2", "Unknown command `pach`", USAGE["patch"]),
    ("stauts", "Unknown command", USAGE["status"]),
    ("aprove 12", "Unknown command", USAGE["approve"]),
    ("rollbak x", "Unknown command", USAGE["rollback"]),
    ("xyzzy", "Commands: patch", "help"),
    ("patch support-assistant v2", "needs `onto`", USAGE["patch"]),
    ("patch support-assistant", "takes an assistant and a version", USAGE["patch"]),
    ("patch a onto", "takes an assistant and a version", USAGE["patch"]),
    ("eval a onto v2", "takes an assistant and a version", USAGE["eval"]),
    ("eval a v2", "needs `on`", USAGE["eval"]),
    ("approve", "needs a run number", USAGE["approve"]),
    ("approve twelve", "not a run number", USAGE["approve"]),
    ("approve run", "needs a run number", USAGE["approve"]),
    ("reject #x", "not a run number", USAGE["reject"]),
    ("retune", "needs a run number", USAGE["retune"]),
    ("retune 3 please", "only a run number", USAGE["retune"]),
    ("rollback", "one assistant name", USAGE["rollback"]),
    ("rollback a b", "one assistant name", USAGE["rollback"]),
    ("status a b", "at most one name", USAGE["status"]),
    ("lineage", "one assistant name", USAGE["lineage"]),
    ("assistants all", "takes no arguments", USAGE["assistants"]),
    ("ask support-assistant", "needs an assistant and a question", USAGE["ask"]),
    ("ask", "needs an assistant and a question", USAGE["ask"]),
    ("rate 7", "an answer number and `up` or `down`", USAGE["rate"]),
    ("rate seven up", "not an answer number", USAGE["rate"]),
    ("rate 7 sideways", "`up` or `down`, not `sideways`", USAGE["rate"]),
]


@pytest.mark.parametrize(("text", "message", "suggestion"), INVALID)
def test_errors_say_what_was_wrong_and_what_is_right(text, message, suggestion):
    error = parse(text)
    assert isinstance(error, ParseError)
    assert message in error.message
    assert error.suggestion == suggestion
    assert suggestion in str(error)


def test_unknown_command_echo_is_clipped_and_cannot_break_formatting():
    error = parse("`" * 500)
    assert isinstance(error, ParseError)
    assert "`" * 3 not in error.message.replace("``", "")
    assert len(error.message) < 200


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text):
    result = parse(text)
    assert isinstance(result, (ParseError, Patch, Eval, Approve, Reject, Rollback, Status, Lineage, Bases,
                               Assistants, Ask, Help))
    if isinstance(result, ParseError):
        assert str(result)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(USAGE)), st.lists(st.text(min_size=1), max_size=5))
def test_known_verbs_with_arbitrary_arguments_never_raise(verb, words):
    result = parse(" ".join([verb, *words]))
    assert result is not None


def test_control_characters_are_refused_with_a_reason():
    from portllm_core.commands.grammar import ParseError, parse

    refused = parse("status support\x00assistant")
    assert isinstance(refused, ParseError) and "control characters" in str(refused)
    assert not isinstance(parse("status\tsupport-assistant"), ParseError)


@pytest.mark.parametrize("verb, value, expected", [
    ("approve", "12", Approve(12)),
    ("reject", "#12", Reject(12)),
    ("retune", "12", Retune(12)),
    ("rollback", "support-assistant", Rollback("support-assistant")),
])
def test_a_button_is_the_command_it_stands_for(verb, value, expected):
    from portllm_core.commands.grammar import parse_button

    assert parse_button(verb, value) == expected


@pytest.mark.parametrize("verb, value, says", [
    ("approve", "12\x1c", "control characters"),  # split() would take \x1c for a space
    ("approve", "12 flaky items", "not one approve argument"),  # a value never carries an override reason
    ("approve", "twelve", "not a run number"),
    ("rollback", "support\x85assistant", "control characters"),
])
def test_a_button_value_is_refused_as_typed_text_would_be(verb, value, says):
    from portllm_core.commands.grammar import parse_button

    refused = parse_button(verb, value)
    assert isinstance(refused, ParseError) and says in str(refused)


def test_an_offer_button_carries_a_release_and_an_assistant():
    from portllm_core.commands.grammar import parse_offer

    assert parse_offer("4:support-assistant") == (4, "support-assistant")
    for bad in ("4:support\x00assistant", "four:support-assistant", "4:", "4:a b"):
        assert isinstance(parse_offer(bad), ParseError), bad
