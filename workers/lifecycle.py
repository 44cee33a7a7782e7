"""Worker process lifecycle: per-process registry connections, the device log, the sweeper timer,
the metrics endpoint.

Connected from workers.celery_app so both `portllm worker` and `celery -A workers.celery_app
worker` get the same behaviour.
"""
from __future__ import annotations

import logging
import threading

from celery import signals

from workers import context

log = logging.getLogger("portllm.worker")

_sweeper: SweeperTimer | None = None
# Set by workers.main for a serve worker on vLLM: its tasks run on threads in this process, so no
# pool process starts (nor loads torch) and the engines are this process's to stop.
threads_pool = False


class SweeperTimer(threading.Thread):
    """Sweeps every `interval` seconds in the worker's main process.

    A thread rather than embedded beat: beat needs a schedule file and exactly one beat per
    deployment, while every sweep step is a conditional update, so each worker may sweep.
    """

    def __init__(self, interval: float) -> None:
        super().__init__(name="portllm-sweeper", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        from workers.sweeper import sweep_once

        while not self.stopped.wait(self.interval):
            try:
                sweep_once(context.current())
            except Exception:  # a database hiccup must not end the sweeping
                log.exception("sweep failed; trying again in %.0f s", self.interval)


@signals.worker_process_init.connect
def _init_process(**_) -> None:
    ctx = context.reset()
    from portllm_engine.models import pick_device
    from portllm_engine.transplant import PatchServer  # noqa: F401  (transformers and peft, once, before any task)

    if ctx.settings.torch_threads is not None:
        import torch

        torch.set_num_threads(ctx.settings.torch_threads)
    device = ctx.settings.device or pick_device()
    log.info("PortLLM worker process ready on device %s", _describe(device))


def _describe(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


@signals.worker_init.connect
def _share_metrics(**_) -> None:
    """Before the pool forks: its processes keep their metrics where the main process reads them."""
    settings = context.current().settings
    if settings.metrics_port is not None:
        from portllm_core import metrics

        metrics.share_with_forked_processes(metrics.process_dir(settings.metrics_dir, "worker", settings.metrics_port))


@signals.worker_ready.connect
def _serve_metrics(**_) -> None:
    ctx = context.current()
    if ctx.settings.metrics_port is not None:
        from prometheus_client import start_http_server

        from portllm_core import metrics

        start_http_server(ctx.settings.metrics_port, registry=metrics.scrape_registry(ctx.session_factory))
        log.info("metrics on http://0.0.0.0:%s/metrics", ctx.settings.metrics_port)


@signals.worker_ready.connect
def _start_sweeper(**_) -> None:
    global _sweeper
    settings = context.current().settings
    if settings.sweep_interval_s > 0 and _sweeper is None:
        _sweeper = SweeperTimer(settings.sweep_interval_s)
        _sweeper.start()
        log.info("sweeper every %.0f s (queued > %.0f s re-enqueued, heartbeat > %.0f s retried)",
                 settings.sweep_interval_s, settings.queued_limit_s, settings.heartbeat_limit_s)


@signals.worker_ready.connect
def _threads_ready(**_) -> None:
    if threads_pool:
        settings = context.current().settings
        log.info("PortLLM serve worker ready: answers on %s, up to %d at once", settings.serve_backend,
                 settings.vllm_concurrency)


@signals.worker_shutdown.connect
def _stop_sweeper(**_) -> None:
    if _sweeper is not None:
        _sweeper.stopped.set()


@signals.worker_shutdown.connect
def _stop_engines(**_) -> None:
    from workers import serving

    serving.close()
