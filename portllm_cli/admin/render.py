"""`run show` for operators: the chat's run card (portllm_cli.terminal) plus what only an operator needs."""
from __future__ import annotations

from rich.console import Group
from rich.text import Text


def run(card, *, every_problem: bool = False) -> Group:
    from portllm_cli import terminal

    data = card.to_json()
    source = f"patch #{data['patch_id']}" if data["patch_id"] is not None else "new patch"
    lines = [f"{source} · {data['kind']} · created {data['created_at']:%Y-%m-%d %H:%M:%S}"]
    if data.get("worker"):
        lines.append(f"worker {data['worker']}, attempt {data['attempts']}")
    if data.get("finished_at") is not None and data.get("started_at") is not None:
        lines.append(f"took {(data['finished_at'] - data['started_at']).total_seconds():.1f} s")
    compat = data.get("compat_report")
    if compat is not None:
        lines.append("compatible" if compat.get("compatible") else "not compatible")
        lines += [f"  warning: {w.get('message')}" for w in compat.get("warnings") or ()]
    if data.get("result_patch_id"):
        lines.append(f"produced patch #{data['result_patch_id']}")
    return Group(terminal.run_card(card, every_problem=every_problem), Text("\n".join(lines), style="dim"))
