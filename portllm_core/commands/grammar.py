"""Parse one command line into a Command, or a ParseError that says what would be right.

Case and spacing tolerant: verbs and keywords match in any case, any run of whitespace
separates words. Names stay as typed; the handlers resolve them against the registry.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Patch:
    assistant: str
    version: str


@dataclass(frozen=True)
class Eval:
    assistant: str
    version: str


@dataclass(frozen=True)
class Approve:
    run_id: int
    reason: str | None = None  # required by the registry only to override a failed gate


@dataclass(frozen=True)
class Reject:
    run_id: int
    reason: str | None = None


@dataclass(frozen=True)
class Retune:
    run_id: int


@dataclass(frozen=True)
class Rollback:
    assistant: str


@dataclass(frozen=True)
class Status:
    assistant: str | None = None


@dataclass(frozen=True)
class Lineage:
    assistant: str


@dataclass(frozen=True)
class Bases:
    family: str | None = None


@dataclass(frozen=True)
class Assistants:
    pass


@dataclass(frozen=True)
class Ask:
    assistant: str
    question: str


@dataclass(frozen=True)
class Rate:
    answer_id: int
    up: bool


@dataclass(frozen=True)
class Help:
    pass


Command = (Patch | Eval | Approve | Reject | Retune | Rollback | Status | Lineage | Bases | Assistants | Ask | Rate
           | Help)

USAGE: dict[str, str] = {
    "patch": "patch <assistant> onto <version>",
    "eval": "eval <assistant> on <version>",
    "approve": "approve <run>",
    "reject": "reject <run> [reason]",
    "retune": "retune <run>",
    "rollback": "rollback <assistant>",
    "status": "status [<assistant>]",
    "lineage": "lineage <assistant>",
    "bases": "bases [family]",
    "assistants": "assistants",
    "ask": "ask <assistant> <question>",
    "rate": "rate <answer> up|down",
    "help": "help",
}


@dataclass(frozen=True)
class ParseError:
    """Bad input, as a value: `message` says what was wrong, `suggestion` what would be right."""

    message: str
    suggestion: str | None = None

    def __str__(self) -> str:
        return f"{self.message} Try `{self.suggestion}`." if self.suggestion else self.message


_RUN_REF = re.compile(r"^#?(\d{1,18})$")
_MENTION = re.compile(r"^<@[A-Z0-9]+(\|[^>]*)?>$")  # a leading @bot mention in a Slack message


# Control characters (C0, DEL and C1) other than tab and line breaks: never typed on purpose, NUL
# cannot even be stored (PostgreSQL refuses it in text), and Python's split() takes some of them
# for spaces, so they are refused before anything else reads the text. Lone surrogates too: they are
# what a console line's bytes that are not UTF-8 become (surrogateescape), and no database or
# Slack call can encode them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def refuse_control(text: str) -> ParseError | None:
    """The one check every entry point runs on what a person sent (slash command, @mention, DM,
    console line, button value) before reading it: the refusal to reply, or None."""
    if _CONTROL.search(text):
        return ParseError("The message contains control characters (such as NUL); type it again without them.", "help")
    return None


def parse(text: str) -> Command | ParseError:
    refused = refuse_control(text)
    if refused is not None:
        return refused
    words = text.split(None, 1)
    if words and _MENTION.match(words[0]):
        words = words[1].split(None, 1) if len(words) > 1 else []
    if words and words[0].lower() == "/portllm":
        words = words[1].split(None, 1) if len(words) > 1 else []
    if not words:
        return ParseError("No command given.", "help")
    verb, rest = words[0].lower(), (words[1] if len(words) > 1 else "")
    parser = _PARSERS.get(verb)
    if parser is None:
        close = difflib.get_close_matches(verb, USAGE, n=1, cutoff=0.5)
        if close:
            return ParseError(f"Unknown command `{_clip(verb)}`.", USAGE[close[0]])
        return ParseError(f"Unknown command `{_clip(verb)}`. Commands: {', '.join(USAGE)}.", "help")
    return parser(rest)


def _clip(word: str, limit: int = 40) -> str:
    """Echo user input back briefly and without backticks that would break the formatting."""
    word = word.replace("`", "'")
    return word if len(word) <= limit else word[: limit - 1] + "…"


def _usage_error(verb: str, what: str) -> ParseError:
    return ParseError(f"{what}", USAGE[verb])


def _onto(verb: str, keyword: str, rest: str) -> tuple[str, str] | ParseError:
    words = rest.split()
    if len(words) == 3 and words[1].lower() == keyword:
        return words[0], words[2]
    if len(words) == 2 and words[1].lower() != keyword:  # forgot the keyword: say so
        return _usage_error(verb, f"`{verb}` needs `{keyword}` between the assistant and the version.")
    return _usage_error(verb, f"`{verb}` takes an assistant and a version.")


def _parse_patch(rest: str) -> Command | ParseError:
    got = _onto("patch", "onto", rest)
    return got if isinstance(got, ParseError) else Patch(*got)


def _parse_eval(rest: str) -> Command | ParseError:
    got = _onto("eval", "on", rest)
    return got if isinstance(got, ParseError) else Eval(*got)


def _run_and_reason(verb: str, rest: str) -> tuple[int, str | None] | ParseError:
    words = rest.split(None, 1)
    if words and words[0].lower() == "run":  # "approve run 12" reads naturally too
        words = words[1].split(None, 1) if len(words) > 1 else []
    if not words:
        return _usage_error(verb, f"`{verb}` needs a run number.")
    match = _RUN_REF.match(words[0])
    if not match:
        return _usage_error(verb, f"`{_clip(words[0])}` is not a run number (like `12` or `#12`).")
    reason = words[1].strip() if len(words) > 1 else None
    return int(match.group(1)), reason or None


def _parse_approve(rest: str) -> Command | ParseError:
    got = _run_and_reason("approve", rest)
    return got if isinstance(got, ParseError) else Approve(*got)


def _parse_reject(rest: str) -> Command | ParseError:
    got = _run_and_reason("reject", rest)
    return got if isinstance(got, ParseError) else Reject(*got)


def _parse_retune(rest: str) -> Command | ParseError:
    got = _run_and_reason("retune", rest)
    if isinstance(got, ParseError):
        return got
    run_id, extra = got
    return Retune(run_id) if extra is None else _usage_error("retune", "`retune` takes only a run number.")


def _one_name(verb: str, rest: str, *, optional: bool) -> str | None | ParseError:
    words = rest.split()
    if len(words) == 1:
        return words[0]
    if not words and optional:
        return None
    need = "at most one name" if optional else "one assistant name"
    return _usage_error(verb, f"`{verb}` takes {need}.")


def _parse_rollback(rest: str) -> Command | ParseError:
    got = _one_name("rollback", rest, optional=False)
    return got if isinstance(got, ParseError) else Rollback(got)  # type: ignore[arg-type]


def _parse_status(rest: str) -> Command | ParseError:
    got = _one_name("status", rest, optional=True)
    return got if isinstance(got, ParseError) else Status(got)


def _parse_lineage(rest: str) -> Command | ParseError:
    got = _one_name("lineage", rest, optional=False)
    return got if isinstance(got, ParseError) else Lineage(got)  # type: ignore[arg-type]


def _parse_bases(rest: str) -> Command | ParseError:
    got = _one_name("bases", rest, optional=True)
    return got if isinstance(got, ParseError) else Bases(got)


def _parse_assistants(rest: str) -> Command | ParseError:
    return Assistants() if not rest.strip() else _usage_error("assistants", "`assistants` takes no arguments.")


def _parse_help(rest: str) -> Command | ParseError:
    return Help()


def _parse_ask(rest: str) -> Command | ParseError:
    words = rest.split(None, 1)
    if len(words) < 2 or not words[1].strip():
        return _usage_error("ask", "`ask` needs an assistant and a question.")
    return Ask(words[0], " ".join(words[1].split()))


_RATINGS = {"up": True, "down": False, "+1": True, "-1": False, "👍": True, "👎": False}


def _parse_rate(rest: str) -> Command | ParseError:
    words = rest.split()
    if len(words) != 2:
        return _usage_error("rate", "`rate` takes an answer number and `up` or `down`.")
    match = _RUN_REF.match(words[0])
    if not match:
        return _usage_error("rate", f"`{_clip(words[0])}` is not an answer number (it is shown under each answer).")
    up = _RATINGS.get(words[1].lower())
    if up is None:
        return _usage_error("rate", f"rate an answer `up` or `down`, not `{_clip(words[1])}`.")
    return Rate(int(match.group(1)), up)


def parse_button(verb: str, value: str) -> Command | ParseError:
    """A card button as the command it stands for (Approve `12` is `approve 12`): its value passes
    the same grammar as typed text, and is one word, so it can never carry a reason."""
    refused = refuse_control(value)
    if refused is not None:
        return refused
    if len(value.split()) != 1:
        return _usage_error(verb, f"This button carries `{_clip(value)}`, not one {verb} argument.")
    return parse(f"{verb} {value}")


def parse_offer(value: str) -> tuple[int, str] | ParseError:
    """A release offer button's value, `<release id>:<assistant>`, through the same checks."""
    refused = refuse_control(value)
    if refused is not None:
        return refused
    release, _, assistant = value.partition(":")
    match = _RUN_REF.match(release)
    if not match or not assistant or len(assistant.split()) != 1:
        return ParseError(f"This button carries `{_clip(value)}`, not a release and an assistant.",
                          "patch <assistant> onto <version>")
    return int(match.group(1)), assistant


_PARSERS = {
    "patch": _parse_patch,
    "eval": _parse_eval,
    "approve": _parse_approve,
    "reject": _parse_reject,
    "retune": _parse_retune,
    "rollback": _parse_rollback,
    "status": _parse_status,
    "lineage": _parse_lineage,
    "bases": _parse_bases,
    "assistants": _parse_assistants,
    "ask": _parse_ask,
    "rate": _parse_rate,
    "help": _parse_help,
}
