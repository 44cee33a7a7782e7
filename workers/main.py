"""`portllm worker`: start a Celery worker on the gpu and/or serve queues."""
from __future__ import annotations

from portllm_core.tasks import QUEUES as KNOWN_QUEUES


def start_worker(
    queues: list[str] | None = None,
    concurrency: int = 1,
    loglevel: str = "info",
    hostname: str | None = None,
) -> None:
    """Run a worker in this process until it is stopped (SIGTERM / Ctrl-C: warm shutdown).

    Each pool process builds its own registry connection and logs its device (CUDA when
    present, else CPU); the main process sweeps stuck runs on a timer (workers.lifecycle).
    """
    queues = queues or list(KNOWN_QUEUES)
    unknown = [q for q in queues if q not in KNOWN_QUEUES]
    if unknown:
        raise SystemExit(f"Unknown queue {', '.join(unknown)}: use {' and/or '.join(KNOWN_QUEUES)}, e.g. --queues gpu,serve")
    from workers.celery_app import app

    argv = ["worker", f"--queues={','.join(queues)}", f"--concurrency={concurrency}", f"--loglevel={loglevel}"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


if __name__ == "__main__":  # python -m workers.main [gpu,serve] — used by the tests
    import sys

    start_worker(sys.argv[1].split(",") if len(sys.argv) > 1 else None)
