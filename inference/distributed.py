"""A batch's cases as Dask tasks: the same command on a laptop or a cluster (``--scheduler``).

Optional: ``pip install remind2reg[cluster]`` (Dask's ``distributed``). ``--scheduler local``
(or ``local:N``) starts a LocalCluster of N worker processes on this machine; any other value
is the address of a running scheduler (``tcp://host:8786``), e.g. one that ``dask-jobqueue``
started on a SLURM cluster (docs/cluster.md).

What stays exactly as in the serial run (:func:`remind2reg.inference.batch.run_serial`):

* each case is one task running :func:`~remind2reg.inference.batch.register_case`, which
  writes its fields atomically from the worker, handles ``--on-error`` and returns a picklable
  :class:`~remind2reg.inference.batch.CaseOutcome`;
* the client alone writes ``timings.json`` and the summary, as outcomes arrive (progress bar);
* with ``--on-error fail`` the first failure cancels the cases not yet finished;
* a worker that dies in the middle of a case leaves no file under a result name (atomic
  writes); Dask retries the case once on another worker, after which it is reported as
  failed; a result lost with its worker after the task finished is submitted again as a new
  task (up to :data:`LOST_RESULT_ROUNDS` rounds); the dead worker's temporary files are
  removed at the end;
* fields are bit-identical to the serial run's for the same input, seed and torch threads
  (each task seeds its case; set ``--threads``: torch's float reductions depend on it).

With ``--device cuda`` every task asks for the worker resource ``GPU=1``: one case per GPU at
a time. A local cluster gets one worker per GPU, each pinned to its own device.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from remind2reg.inference.batch import (
    BatchRun,
    CaseJob,
    CaseOutcome,
    Engine,
    handle_failure,
    problem_outcomes,
    register_case,
)
from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.errors import UsageError
from remind2reg.inference.io.atomic import remove_stale_partials
from remind2reg.inference.settings import parse_scheduler

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
RETRIES = 1  # a case whose worker died is run once more elsewhere
POLL_S = 5.0
LOST_RESULT_ROUNDS = 3  # a case whose finished result died with its worker is submitted again
LOCAL_NO_WORKERS_S = 60.0  # a local cluster with no worker for this long is dead, not starting
REMOTE_NO_WORKERS_LOG_S = 300.0  # a remote scheduler may wait for a queue: say so, keep waiting


class SchedulerError(UsageError):
    """The Dask scheduler cannot be reached or started (the command line exits with code 2)."""


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to build the batch's :class:`~remind2reg.inference.batch.Engine`."""

    method: str
    config: RegistrationConfig | None
    device: str
    seed: int
    threads: int | None  # torch threads per task (None: the worker's default)


_ENGINES: dict[EngineSpec, Engine] = {}  # one per worker process and spec, built on first use


def _worker_device(device: str) -> str:
    """``cuda:<k>`` for the k-th worker of a local GPU cluster (its name is its index), else ``device``."""
    if device != "cuda":
        return device
    import torch
    from distributed import get_worker

    name = get_worker().name
    return f"cuda:{int(name) % torch.cuda.device_count()}" if isinstance(name, int) else "cuda"


def run_case_task(job: CaseJob, output_dir: str, spec: EngineSpec, on_error: str) -> CaseOutcome:
    """One case on a worker (the task Dask runs)."""
    import torch

    if spec.threads:
        torch.set_num_threads(spec.threads)
    engine = _ENGINES.get(spec)
    if engine is None:
        engine = _ENGINES[spec] = Engine(spec.method, spec.config, _worker_device(spec.device), spec.seed)
    return register_case(job, Path(output_dir), engine, on_error)  # type: ignore[arg-type]


def _local_cluster(workers: int | None, device: str):
    from distributed import LocalCluster

    if device == "cuda":
        import torch

        workers = workers or max(1, torch.cuda.device_count())
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            resources={"GPU": 1},
        )
    workers = workers or max(1, (os.cpu_count() or 1))
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


def connect(scheduler: str, device: str):
    """``(client, cluster or None, workers)`` for ``--scheduler``; :class:`SchedulerError` when it fails."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise SchedulerError(
            "--scheduler needs Dask's distributed: pip install 'remind2reg[cluster]'"
        ) from exc
    kind, workers = parse_scheduler(scheduler)
    cluster = None
    try:
        if kind == "local":
            cluster = _local_cluster(workers, device)
            client = Client(cluster, timeout=CONNECT_TIMEOUT_S)
        else:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise SchedulerError(
            f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT_S:g} s ({exc})"
        ) from exc
    count = len(client.scheduler_info().get("workers", {})) or (workers or 1)
    log.info("Dask scheduler %s with %d workers (dashboard off)", client.scheduler.address, count)
    return client, cluster, count


def each_completed(client, futures, local: bool, poll_s: float = POLL_S):
    """Yield ``futures`` as they finish; never wait forever on a cluster that has lost its workers.

    A local cluster whose workers are all gone for :data:`LOCAL_NO_WORKERS_S` (for example a
    task that no worker can even unpickle makes every worker close) raises
    :class:`SchedulerError` instead of hanging. A remote scheduler may legitimately have no
    workers for a while (a batch queue starting them), so there it is only logged.
    """
    import time

    from distributed import wait

    remaining = list(futures)
    empty_since: float | None = None
    limit = LOCAL_NO_WORKERS_S if local else REMOTE_NO_WORKERS_LOG_S
    while remaining:
        try:
            done, _ = wait(remaining, timeout=poll_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        if done:
            remaining = [f for f in remaining if f not in done]
            yield from (f for f in futures if f in done)  # submission order within a batch
            continue
        if client.scheduler_info().get("workers"):
            empty_since = None
            continue
        now = time.monotonic()
        empty_since = empty_since or now
        if now - empty_since < limit:
            continue
        message = (
            f"the Dask scheduler {client.scheduler.address} has had no worker for "
            f"{now - empty_since:.0f} s with {len(remaining)} task(s) left"
        )
        if local:
            raise SchedulerError(message + " (the local workers died; see the log above)")
        log.warning("%s; still waiting for workers", message)
        empty_since = now


def run_distributed(
    run: BatchRun,
    jobs: list[CaseJob],
    problems: list,
    spec: EngineSpec,
    scheduler: str,
    progress: bool,
) -> None:
    """The folder's problems (here), then its cases as Dask tasks; outcomes recorded as they arrive."""
    for outcome in problem_outcomes(problems, run.output_dir, run.on_error):
        run.add(outcome)
        if run.stops_after(outcome):
            run.summary.not_attempted = [j.case for j in jobs]
            return
    client, cluster, workers = connect(scheduler, spec.device)
    try:
        if spec.threads is None and cluster is not None:
            spec = replace(spec, threads=max(1, (os.cpu_count() or 1) // workers))
        _gather(client, run, jobs, spec, progress, local=cluster is not None)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    remove_stale_partials(run.output_dir)  # temporary files of workers that died


def _gather(
    client, run: BatchRun, jobs: list[CaseJob], spec: EngineSpec, progress: bool, local: bool
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="register", unit="case", disable=not progress)
    todo = list(jobs)
    for attempt in range(LOST_RESULT_ROUNDS):
        todo = _gather_round(client, run, todo, spec, bar, local, last=attempt == LOST_RESULT_ROUNDS - 1)
        if not todo:
            break
        log.warning(
            "Cases %s: their results were lost with a worker; submitting them again", [j.case for j in todo]
        )
    bar.close()


def _result_lost(future) -> bool:
    """True when ``future`` failed to deliver although its task did not fail: the worker that
    held the result died and Dask put the task back to run again (``distributed`` can then
    raise an internal error, e.g. an asyncio event bound to another loop, from ``result()``).
    Such a case is submitted again as a new task instead of being reported as failed."""
    return future.status not in ("error", "cancelled")


def _gather_round(
    client, run: BatchRun, jobs: list[CaseJob], spec: EngineSpec, bar, local: bool, last: bool
) -> list[CaseJob]:
    """Submit ``jobs`` as tasks and record their outcomes as they arrive; returns the jobs
    whose result was lost with a worker (to submit again), none when ``last``."""
    resources = {"GPU": 1} if spec.device == "cuda" else None
    batch = uuid.uuid4().hex[:8]
    futures = {
        client.submit(
            run_case_task, job, str(run.output_dir), spec, run.on_error,
            key=f"register-{job.case}-{batch}", retries=RETRIES, resources=resources, pure=False,
        ): job
        for job in jobs
    }  # fmt: skip
    pending = dict(futures)
    lost: list[CaseJob] = []
    for future in each_completed(client, futures, local):
        job = pending.pop(future)
        try:
            outcome = future.result()
        except Exception as exc:  # the worker died more often than Dask retries, or the task failed to run
            if not last and _result_lost(future):
                log.warning("Case %s: result lost (%s: %s)", job.case, type(exc).__name__, exc)
                client.cancel([future])
                lost.append(job)
                continue
            outputs = [p.output_name for p in job.todo]
            failure, records = handle_failure(
                job.case, outputs, job.pairs[0].fixed, exc, run.output_dir, run.on_error
            )
            outcome = CaseOutcome(job.case, records, [failure])
        run.add(outcome)
        bar.update(1)
        if run.stops_after(outcome):
            run.summary.not_attempted = sorted(j.case for j in [*pending.values(), *lost])
            client.cancel(list(pending))
            return []
    return lost
