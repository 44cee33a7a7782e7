"""`portllm worker`: start a Celery worker on the gpu and/or serve queues."""
from __future__ import annotations

import subprocess
import sys

from portllm_core.settings import Settings
from portllm_core.tasks import GPU_QUEUE, QUEUES as KNOWN_QUEUES, SERVE_QUEUE


def start_worker(
    queues: list[str] | None = None,
    concurrency: int = 1,
    loglevel: str = "info",
    hostname: str | None = None,
) -> None:
    """Run a worker in this process until it is stopped (SIGTERM / Ctrl-C: warm shutdown).

    Each pool process builds its own registry connection and logs its device (CUDA when
    present, else CPU); the main process sweeps stuck runs on a timer (workers.lifecycle).

    With PORTLLM_SERVE_BACKEND=vllm the serve queue is consumed by a pool of threads in one
    process, which supervises the vLLM servers: answers wait on the engine, which batches them,
    and no thread holds a base. A worker asked for gpu and serve then runs serve in a second
    process, so gpu jobs keep their process pool and its hard time limits.
    """
    queues = queues or list(KNOWN_QUEUES)
    unknown = [q for q in queues if q not in KNOWN_QUEUES]
    if unknown:
        raise SystemExit(f"Unknown queue {', '.join(unknown)}: use {' and/or '.join(KNOWN_QUEUES)}, e.g. --queues gpu,serve")
    settings = Settings()
    if settings.serve_backend == "vllm" and SERVE_QUEUE in queues:
        if queues == [SERVE_QUEUE]:
            return _main([SERVE_QUEUE], loglevel, hostname, pool="threads", concurrency=settings.vllm_concurrency)
        name = f"serve-{hostname}" if hostname else "serve@%h"
        serve = subprocess.Popen([sys.executable, "-m", "workers.main", SERVE_QUEUE, name])
        try:
            _main([q for q in queues if q != SERVE_QUEUE] or [GPU_QUEUE], loglevel, hostname,
                  pool="prefork", concurrency=concurrency)
        finally:
            serve.terminate()  # warm shutdown: its answers finish, its engines stop
            serve.wait()
        return
    _main(queues, loglevel, hostname, pool="prefork", concurrency=concurrency)


def _main(queues: list[str], loglevel: str, hostname: str | None, *, pool: str, concurrency: int) -> None:
    from workers import lifecycle
    from workers.celery_app import app

    lifecycle.threads_pool = pool == "threads"
    argv = ["worker", f"--queues={','.join(queues)}", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
            f"--pool={pool}"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


if __name__ == "__main__":  # python -m workers.main [gpu,serve] [hostname] — used by the tests
    start_worker(sys.argv[1].split(",") if len(sys.argv) > 1 else None,
                 hostname=sys.argv[2] if len(sys.argv) > 2 else None)
