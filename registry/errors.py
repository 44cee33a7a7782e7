"""Registry errors. str(error) is one line for the person who typed the command."""
from __future__ import annotations

from collections.abc import Sequence


def mention(user: str) -> str:
    """How a user id reads in a message: `@alice`; Slack's own `<@U123>` mentions pass through."""
    return user if user.startswith(("@", "<")) else f"@{user}"


def channel_label(channel: str) -> str:
    return channel if channel.startswith(("#", "<")) else f"#{channel}"


class RegistryError(Exception):
    """Base of every error the registry raises on purpose."""


class NotFound(RegistryError):
    pass


class UnknownAssistant(NotFound):
    def __init__(self, name: str, suggestions: Sequence[str] = (), known: Sequence[str] = ()):
        self.name = name
        self.suggestions = list(suggestions)
        if self.suggestions:
            hint = f" Did you mean: {', '.join(self.suggestions)}?"
        elif known:
            hint = f" Known assistants: {', '.join(known)}."
        else:
            hint = " No assistants are registered yet."
        super().__init__(f"Unknown assistant '{name}'.{hint}")


class UnknownBase(NotFound):
    def __init__(self, family: str, version: str, suggestions: Sequence[str] = (), known: Sequence[str] = ()):
        self.family = family
        self.version = version
        self.suggestions = list(suggestions)
        if self.suggestions:
            hint = f" Did you mean: {', '.join(self.suggestions)}?"
        elif known:
            hint = f" Registered versions: {', '.join(known)}."
        else:
            hint = f" No {family} base is registered yet."
        super().__init__(f"Unknown base version '{version}' of {family}.{hint}")


class UnknownRun(NotFound):
    def __init__(self, run_id: int):
        self.run_id = run_id
        super().__init__(f"There is no run #{run_id}. `status` lists the current runs.")


class UnknownPatch(NotFound):
    def __init__(self, message: str):
        super().__init__(message)


class DuplicateError(RegistryError):
    """Something with the same identity is already registered."""


class NotApprover(RegistryError):
    def __init__(self, user: str, assistant: str, approvers: Sequence[str]):
        self.user = user
        self.assistant = assistant
        listed = ", ".join(mention(a) for a in approvers) or "none yet"
        super().__init__(f"You are not an approver of {assistant} (approvers: {listed}).")


# How a rollout state or run status reads after "it": "Run #12 is not awaiting approval (it is live)."
_STATE_PHRASES = {
    "live": "is live",
    "superseded": "was superseded",
    "rolled_back": "was rolled back",
    "rejected": "was rejected",
    "superseded_by_newer": "was replaced by a newer run",
    "queued": "is still queued",
    "running": "is still running",
    "failed": "failed",
    "cancelled": "was cancelled",
    "succeeded": "finished without a rollout",
    "eval": "is an eval-only run",
}


def _state_phrase(state: str) -> str:
    return _STATE_PHRASES.get(state, f"is {state.replace('_', ' ')}")


class RunNotAwaitingApproval(RegistryError):
    def __init__(self, run_id: int, state: str, message: str | None = None):
        self.run_id = run_id
        self.state = state
        super().__init__(message or f"Run #{run_id} is not awaiting approval (it {_state_phrase(state)}).")


class ReplacedByNewerRun(RunNotAwaitingApproval):
    """The run's proposal was retired by a newer run's for the same assistant, base and channel."""

    def __init__(
        self, run_id: int, state: str, *, current_run_id: int, current_state: str,
        current_pending: bool, assistant: str, version: str, channel: str,
    ):
        self.current_run_id = current_run_id
        replaced = (f"Run #{run_id} was replaced by run #{current_run_id} for {assistant} on {version} "
                    f"in {channel_label(channel)}")
        if current_pending:
            message = f"{replaced}: decide run #{current_run_id}."
        else:
            message = f"{replaced}; run #{current_run_id} {_state_phrase(current_state)}."
        super().__init__(run_id, state, message)


class NothingToRollBack(RegistryError):
    def __init__(self, assistant: str, channel: str):
        self.assistant = assistant
        self.channel = channel
        super().__init__(f"Nothing to roll back for {assistant} in {channel_label(channel)}.")


class InvalidTransition(RegistryError):
    def __init__(self, what: str, current: str, target: str):
        self.current = current
        self.target = target
        super().__init__(f"{what} is {current.replace('_', ' ')}; it cannot become {target.replace('_', ' ')}.")


class GateFailedNeedsAdmin(RegistryError):
    def __init__(self, run_id: int, assistant: str, admins: Sequence[str]):
        self.run_id = run_id
        listed = ", ".join(mention(a) for a in admins) or "none set"
        super().__init__(
            f"Run #{run_id} failed the KPI gate: only an admin of {assistant} "
            f"(admins: {listed}) can approve it, and only with a written reason."
        )


class ConcurrentUpdate(RegistryError):
    """Someone else changed the same thing at the same moment; retrying reads the new state."""


class NotRequester(RegistryError):
    def __init__(self, user: str, assistant: str, requesters: Sequence[str]):
        listed = ", ".join(mention(r) for r in requesters)
        super().__init__(f"Only {listed} may request runs of {assistant}; ask one of them, or an operator "
                         f"to add you (`portllm assistant set {assistant} --add-requester <you>`).")


class WrongChannel(RegistryError):
    """A decision typed or clicked outside the channel its run or rollout belongs to."""

    def __init__(self, what: str, channels: Sequence[str], action: str):
        where = " or ".join(channel_label(c) for c in channels)
        super().__init__(f"{what} {'belongs to' if len(channels) == 1 else 'is in'} {where}: {action} there.")


class OwnRunUnderFourEyes(RegistryError):
    def __init__(self, run_id: int, assistant: str):
        super().__init__(f"You requested run #{run_id}, and {assistant} follows the four-eyes rule: "
                         "another approver has to approve it.")


class RateLimited(RegistryError):
    def __init__(self, whose: str, count: int, window_s: int, retry_after_s: float, retry_at: str):
        minutes = max(1, round(retry_after_s / 60))
        super().__init__(f"{whose}: {count} requested in the last {window_s // 60} minutes, the most allowed. "
                         f"Try again in {minutes} min (after {retry_at} UTC).")
