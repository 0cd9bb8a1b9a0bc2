"""Running a sweep: the points of a spec not yet in the output folder's table, computed on Dask,
and the report of every point."""

import time
from pathlib import Path

from ....hw.errors import InputError
from ....sw.progress import progress
from .. import check_output_folder
from .cluster import (
    _compute, _connect_remote, _default_workers, _start_local, check_scheduler_address,
)
from .points import expand_points
from .report import SweepReport, _plot
from .spec import SweepSpec, load_spec
from .table import _ResultsTable

__all__ = ["run_sweep"]


def run_sweep(spec, output, scheduler=None, workers=None, threads_per_worker=1,
              processes=True, plots=True):
    """Runs every point of ``spec`` not yet in ``output``'s table, on Dask.

    Parameters
    ----------
    spec : SweepSpec or str or Path
        A spec, or the path of its TOML file.
    output : str or Path
        The folder of the results table (:data:`RESULTS_FILE`) and plots; created if missing.
        Rows already there are kept: those of this spec's points are not computed again.
    scheduler : str or None
        Address of a running Dask scheduler, e.g. ``tcp://10.0.0.5:8786``; None starts a
        local cluster.
    workers : int or None
        Local cluster workers; None: one per CPU core this process may use.
    threads_per_worker : int
        Threads of each local worker.
    processes : bool
        Local workers as processes (parallel in Python code) or threads of this process.
    plots : bool
        Write the Pareto plots.

    Returns
    -------
    SweepReport

    Raises
    ------
    ValueError, FileNotFoundError
        For a bad spec, a model or layer that does not exist, an output folder in use by
        another sweep or holding a table of other columns, local cluster sizes given with
        ``scheduler``, or a scheduler that does not answer within :data:`CONNECT_TIMEOUT_S`
        seconds. All of these are raised before any point is computed.
    """
    check_output_folder(output, "sweep table")
    if scheduler is not None:
        check_scheduler_address(scheduler)
    if scheduler is not None and (workers is not None or threads_per_worker != 1):
        raise InputError("--workers and --threads-per-worker size the local cluster: with "
                         "--scheduler, the cluster's size is set where its workers start")
    workers = _default_workers() if workers is None else workers
    for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, not {value!r}")
    client, cluster, where = None, None, "nothing to compute"
    if scheduler is not None:
        client, where = _connect_remote(scheduler)
    table = None
    try:
        if not isinstance(spec, SweepSpec):
            spec = load_spec(spec)
        points = expand_points(spec)
        table = _ResultsTable(output)
        done = {row.key for row in table.rows}
        todo = [point for point in points if point.key not in done]
        progress(f"sweep: {len(points)} points (seed {spec.seed}"
             + (f", verify seed {spec.verify.seed}" if spec.verify else "")
             + f"), {len(points) - len(todo)} already in {table.path}, {len(todo)} to compute")
        started = time.perf_counter()
        compute_s = 0.0
        if todo:
            if client is None:
                client, cluster, where = _start_local(workers, threads_per_worker, processes)
            progress(f"sweep: running on {where}")
            computing = time.perf_counter()
            _compute(todo, table, spec.digest(), client)
            compute_s = time.perf_counter() - computing
        wall = time.perf_counter() - started
        by_key = {row.key: row for row in table.rows}
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        if table is not None:
            table.close()
    results = [by_key[point.key] for point in points]
    report = SweepReport(spec=spec, output=str(output), results=results, points=len(points),
                         skipped=len(points) - len(todo), computed=len(todo),
                         failed=sum(row.failed for row in results), wall_s=wall,
                         points_per_s=len(todo) / compute_s if todo else 0.0, cluster=where)
    if plots:
        report.plots = _plot(report.design_points(), Path(output))
    return report
