"""Where the family trainings run: threads in this process, or a Dask cluster (prefect-dask).

Dask workers are other processes, possibly on other machines. They need three things the flow
process has: the code (this package installed), the workspace (same paths: a shared filesystem on a
real cluster) and the Prefect API. In ephemeral mode each worker would start a Prefect server of its
own, so `shared_prefect_api` starts one for the whole run and hands its URL to the workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from components.config import OrchestrationConfig


def task_runner_for(orch: OrchestrationConfig):
    if orch.task_runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=orch.max_workers)
    from prefect_dask import DaskTaskRunner

    if orch.dask_address:
        return DaskTaskRunner(address=orch.dask_address)
    # One thread per worker process: a training saturates its core, and torch in a Dask worker
    # starts with OMP_NUM_THREADS=1 (distributed's pre-spawn environment). That environment also sets
    # MALLOC_TRIM_THRESHOLD_=65536, at which glibc hands torch's per-step buffers back to the OS and
    # faults them in again, and workers sample their stacks every 10 ms: both slow training down
    # (docs/benchmarks.md). None unsets a variable (distributed.nanny).
    import dask

    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None, "distributed.worker.profile.enabled": False})
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": orch.dask_workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
    )


@contextmanager
def shared_prefect_api(orch: OrchestrationConfig) -> Iterator[None]:
    """With the Dask runner and no PREFECT_API_URL: one temporary Prefect server for the flow and
    every worker process (exported through the environment LocalCluster's workers inherit)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if orch.task_runner != "dask" or PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    # Prefect's own ephemeral server (a per-process singleton, stopped at exit): started here if
    # this process has not started it yet.
    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)
