"""``remind2reg register --scheduler``: the cases as Dask tasks behave exactly like the serial run.

A LocalCluster of 2 worker processes on small synthetic cases; torch threads fixed to 1 in both
runs (fields depend on the thread count, through float reductions).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import distributed  # the cluster extra, installed by make install
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from remind2reg.cli import main
from remind2reg.inference.errors import EXIT_INPUT, EXIT_OK, EXIT_USAGE
from remind2reg.inference.io.nifti import write_image

SHAPE = (28, 24, 26)  # 1 mm voxels


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """Three cases: the US a shifted, squared copy of smooth MR structure; case 0002 without T2."""
    root = tmp_path_factory.mktemp("dask") / "data"
    for index, case in enumerate(("0001", "0002", "0003")):
        rng = np.random.default_rng(index)
        mr = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0).astype(np.float32) + 3.0
        us = np.roll(mr, 1 + index, axis=0) ** 2
        us[:3], us[-3:] = 0, 0
        write_image(root / f"ReMIND2Reg_{case}_0000.nii.gz", us, np.eye(4))
        write_image(root / f"ReMIND2Reg_{case}_0001.nii.gz", mr, np.eye(4))
        if case != "0002":
            write_image(root / f"ReMIND2Reg_{case}_0002.nii.gz", -mr, np.eye(4))
    return root


def register(input_dir: Path, output_dir: Path, *options: str) -> int:
    args = ["-q", "register", "--input", str(input_dir), "--output", str(output_dir), "--device", "cpu"]
    return main([*args, "--threads", "1", *options])


@pytest.fixture(scope="module")
def serial(cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    assert register(cases, out) == EXIT_OK
    return out


def _fields(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("disp_*.nii.gz"))}


def _same_fields(a: Path, b: Path) -> None:
    fa, fb = _fields(a), _fields(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert np.array_equal(fa[name], fb[name]), name


def test_local_cluster_gives_the_serial_fields_bit_for_bit(cases, serial, tmp_path):
    out = tmp_path / "out"
    assert register(cases, out, "--scheduler", "local:2") == EXIT_OK
    _same_fields(serial, out)
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings["pairs"]) == list(json.loads((serial / "timings.json").read_text())["pairs"])
    assert timings["scheduler"] == "local:2" and not list(out.glob(".*partial*"))


def test_a_corrupt_case_is_reported_and_the_others_are_written(cases, serial, tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    for p in cases.iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    bad = data / "ReMIND2Reg_0002_0000.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "out"
    assert register(data, out, "--scheduler", "local:2", "--on-error", "skip") == EXIT_INPUT
    assert f"case 0002, file {bad}: not a readable NIfTI image" in caplog.text
    names = sorted(_fields(out))
    assert names == [n for n in sorted(_fields(serial)) if "_0002_" not in n]
    for name in names:
        assert np.array_equal(_fields(out)[name], _fields(serial)[name])


def test_resume_finishes_a_half_done_folder(cases, serial, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("disp_0001_0000_0001_0001.nii.gz", "disp_0001_0000_0001_0002.nii.gz"):
        (out / name).write_bytes((serial / name).read_bytes())
    assert register(cases, out, "--scheduler", "local:2", "--resume") == EXIT_OK
    _same_fields(serial, out)


class _KillOnce(distributed.WorkerPlugin):
    """Kills the worker process a moment after it starts case 0003's task, the first time only."""

    def __init__(self, marker: str):
        self.marker = marker

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "register-0003" in str(key) and not os.path.exists(self.marker):
            Path(self.marker).write_text("killed")
            threading.Thread(target=lambda: (time.sleep(0.3), os._exit(1)), daemon=True).start()


def test_a_worker_killed_in_the_middle_of_a_case_leaves_no_partial_file(cases, serial, tmp_path):
    marker = tmp_path / "killed"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client:
            client.register_plugin(_KillOnce(str(marker)))
            out = tmp_path / "out"
            assert register(cases, out, "--scheduler", cluster.scheduler_address) == EXIT_OK
    assert marker.exists()  # the worker was killed while running case 0003 ...
    _same_fields(serial, out)  # ... and the retried case gave the same fields
    assert not list(out.glob(".*partial*"))


def test_an_unreachable_scheduler_is_a_clear_error_not_a_hang(cases, tmp_path, caplog):
    t0 = time.monotonic()
    assert register(cases, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9") == EXIT_USAGE
    assert time.monotonic() - t0 < 60
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in caplog.text
    assert not list((tmp_path / "out").glob("disp_*"))


def test_a_malformed_scheduler_is_a_usage_error(cases, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        register(cases, tmp_path / "out", "--scheduler", "local:zero")
    assert exit_info.value.code == EXIT_USAGE
    assert "local:N needs a positive worker count" in capsys.readouterr().err


def test_a_local_cluster_that_lost_all_its_workers_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """A task no worker can unpickle closes every worker; the client must give up, not wait forever.

    (This is how the benchmark harness once hung CI: its jobs referred to a module the workers
    could not import.)
    """
    from remind2reg.inference import distributed as dist

    module = tmp_path / "only_on_the_client.py"
    module.write_text("def task():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_the_client  # imported here, then gone before a worker looks

    module.unlink()  # spawned workers inherit sys.path, so the file itself must go
    shutil.rmtree(tmp_path / "__pycache__", ignore_errors=True)

    monkeypatch.setattr(dist, "LOCAL_NO_WORKERS_S", 2.0)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        with distributed.Client(cluster) as client:
            futures = [client.submit(only_on_the_client.task, pure=False)]
            with pytest.raises(dist.SchedulerError, match="no worker for"):
                list(dist.each_completed(client, futures, local=True, poll_s=0.5))
    finally:
        cluster.close()


def test_each_completed_yields_every_future_once(tmp_path):
    from remind2reg.inference.distributed import each_completed

    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            futures = [client.submit(pow, 2, k, pure=False) for k in range(6)]
            got = [f.result() for f in each_completed(client, futures, local=True, poll_s=0.2)]
            assert sorted(got) == [2**k for k in range(6)]
    finally:
        cluster.close()


class _FakeFuture:
    def __init__(self, job, lose: bool):
        self.job, self.lose = job, lose
        self.status = "pending" if lose else "finished"

    def result(self):
        if self.lose:  # what distributed raised in CI when the worker holding the result died
            raise RuntimeError("<asyncio.locks.Event object> is bound to a different event loop")
        from remind2reg.inference.batch import CaseOutcome

        return CaseOutcome(self.job.case)


class _FakeClient:
    """Submits by returning fake futures; the first submission of case 0003 loses its result."""

    def __init__(self):
        self.submitted: list[str] = []
        self.cancelled = 0

    def submit(self, fn, job, *args, **kwargs):
        first = job.case not in self.submitted
        self.submitted.append(job.case)
        return _FakeFuture(job, lose=first and job.case == "0003")

    def cancel(self, futures):
        self.cancelled += len(futures)


def test_a_result_lost_with_its_worker_is_submitted_again_not_reported_failed(monkeypatch, tmp_path):
    """A finished case whose result died with its worker (status back to pending, and
    ``result()`` raising distributed's internal error) runs again as a new task."""
    from remind2reg.inference import distributed as dist
    from remind2reg.inference.batch import BatchRun, CaseJob
    from remind2reg.inference.io.dataset import RegistrationPair

    monkeypatch.setattr(dist, "each_completed", lambda client, futures, local: iter(list(futures)))
    recorded = []
    monkeypatch.setattr(BatchRun, "add", lambda self, outcome: recorded.append(outcome.case))

    def job(case: str) -> CaseJob:
        pair = RegistrationPair(
            tmp_path / f"ReMIND2Reg_{case}_0000.nii.gz", tmp_path / f"ReMIND2Reg_{case}_0001.nii.gz"
        )
        return CaseJob((pair,), (pair,))

    client = _FakeClient()
    run = BatchRun(tmp_path, "identity", "cpu", "skip")
    spec = dist.EngineSpec("identity", None, "cpu", 0, 1)
    dist._gather(client, run, [job("0001"), job("0003")], spec, progress=False, local=True)
    assert client.submitted == ["0001", "0003", "0003"] and client.cancelled == 1
    assert recorded == ["0001", "0003"]  # both recorded once, neither as a failure
    assert run.summary.failures == []


def test_initial_transforms_reach_the_workers(cases, serial, tmp_path):
    """``--init-transforms`` with a local cluster: the same fields as the serial run, bit for bit
    (the folder travels with each case's task), and each pair records its file."""
    init = tmp_path / "init"
    init.mkdir()
    shift = np.eye(4)
    shift[:3, 3] = (1.5, -1.0, 0.5)
    for case in ("0001", "0002", "0003"):
        np.savetxt(init / f"ReMIND2Reg_{case}_0000.txt", shift)
    serial_out, dask_out = tmp_path / "serial", tmp_path / "dask"
    assert register(cases, serial_out, "--init-transforms", str(init)) == EXIT_OK
    assert register(cases, dask_out, "--init-transforms", str(init), "--scheduler", "local:2") == EXIT_OK
    _same_fields(serial_out, dask_out)
    started, plain = _fields(dask_out), _fields(serial)
    assert any(not np.array_equal(started[name], plain[name]) for name in plain)  # the start mattered
    pairs = json.loads((dask_out / "timings.json").read_text())["pairs"]
    assert pairs["disp_0003_0000_0003_0002.nii.gz"]["init_transform"] == str(
        init / "ReMIND2Reg_0003_0000.txt"
    )
