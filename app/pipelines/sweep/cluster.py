"""Running points on Dask: a running cluster's scheduler checked and connected to, or a local
cluster started; the points submitted and their rows written as they complete.

``distributed`` is imported where it is used, so that an unreachable scheduler is reported in
seconds, before it loads.
"""

import asyncio
import os
import re
from concurrent.futures import ThreadPoolExecutor

from ....hw.errors import InputError, RunFailure
from ....sw.progress import progress_bar
from .worker import PointResult, run_point

__all__ = ["CONNECT_TIMEOUT_S", "check_scheduler_address"]

#: Seconds to wait for a Dask scheduler to answer before giving up.
CONNECT_TIMEOUT_S = 3


def _default_workers():
    return len(os.sched_getaffinity(0))


#: A TCP scheduler address as ``--scheduler`` takes it: an optional scheme, a host, a port.
_TCP_ADDRESS = re.compile(r"(?:(?:tcp|tls)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)"
                          r":(?P<port>\d{1,5})")
#: Dask's other transports, whose addresses its client checks itself.
_OTHER_SCHEMES = ("inproc://", "ws://", "wss://", "ucx://")


def check_scheduler_address(scheduler):
    """``(host, port)`` of a TCP scheduler address such as ``tcp://127.0.0.1:8786``, or None
    for an address of another Dask transport (``inproc://``, ``ws://``, ...).

    Raises
    ------
    ValueError
        If the address is of no Dask transport, or a TCP one is not ``[tcp://|tls://]HOST:PORT``
        with a port from 1 to 65535.
    """
    if not isinstance(scheduler, str):
        raise TypeError(f"scheduler must be an address string, not {scheduler!r}")
    if scheduler.startswith(_OTHER_SCHEMES):
        return None
    match = _TCP_ADDRESS.fullmatch(scheduler.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise InputError(f"--scheduler {scheduler!r} is not a scheduler address: write "
                         "tcp://HOST:PORT (or tls://HOST:PORT) with a port from 1 to 65535, "
                         "e.g. tcp://127.0.0.1:8786")
    return match["host"].strip("[]"), int(match["port"])


def _connect_remote(scheduler):
    """A client of the running Dask cluster at ``scheduler``, or a ValueError in seconds."""
    import socket

    from distributed import Client

    address = check_scheduler_address(scheduler)
    advice = ("start one with `dask scheduler` and workers with `dask worker ADDRESS` (see "
              "docs/sweeps.md)")
    try:  # a closed port or an unknown host answers at once: no Dask client to clean up
        if address is not None:
            socket.create_connection(address, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(f"no Dask scheduler answers at {scheduler!r} "
                         f"({error.strerror or type(error).__name__}): {advice}") from None
    # Asked on a comm of its own before a Client exists: a Client that fails to connect
    # leaves its clean-up to the garbage collector, which prints a traceback on stderr.
    try:
        probe = asyncio.wait_for(_identity(scheduler), CONNECT_TIMEOUT_S)
        with ThreadPoolExecutor(1) as thread:  # its own event loop, even under a running one
            kind = thread.submit(asyncio.run, probe).result()
    except Exception as error:  # noqa: BLE001 - whatever answers there, it is no scheduler
        # Not the error's own text: whatever answered there speaks no Dask, and what the
        # comm made of its bytes (a 3 EiB message length, say) tells the user nothing.
        raise InputError(f"no Dask scheduler answers at {scheduler!r} within "
                         f"{CONNECT_TIMEOUT_S} s ({type(error).__name__}): {advice}") from None
    if kind != "Scheduler":
        raise InputError(f"{scheduler!r} is a Dask {kind}, not a scheduler: give the address "
                         "`dask scheduler` printed")
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except Exception as error:  # noqa: BLE001 - it answered the identity probe, then failed
        raise InputError(f"the Dask scheduler at {scheduler!r} did not take a client within "
                         f"{CONNECT_TIMEOUT_S} s ({type(error).__name__}): {advice}") from None
    count = len(client.scheduler_info()["workers"])
    return client, f"the Dask cluster at {scheduler} ({count} worker(s) when the sweep began)"


async def _identity(scheduler):
    """The ``type`` a Dask server at ``scheduler`` says it is (``Scheduler``, ``Worker``...)."""
    from distributed.comm import connect
    from distributed.core import send_recv

    comm = await connect(scheduler, timeout=CONNECT_TIMEOUT_S)
    try:
        reply = await send_recv(comm, op="identity")
    finally:
        comm.abort()
    if not isinstance(reply, dict) or "type" not in reply:
        raise TypeError(f"not a Dask identity: {reply!r:.80}")
    return reply["type"]


def _start_local(workers, threads_per_worker, processes):
    """A client of a new local cluster (closed with :meth:`Client.close` of its
    ``cluster``), and where it runs."""
    import logging

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                           processes=processes, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    where = (f"a local cluster of {workers} worker(s) x {threads_per_worker} thread(s)"
             + ("" if processes else " in this process"))
    return Client(cluster, set_as_default=False), cluster, where


def _compute(points, table, spec_digest, client):
    """Submits ``points``; appends each row to ``table`` as it completes. A task that fails
    outside :func:`run_point` (a worker killed too often, say) is recorded as failed.

    Raises
    ------
    RuntimeError
        After the other rows are written, if tasks were cancelled (the scheduler went away).
    """
    from distributed import as_completed

    futures = {client.submit(run_point, point, spec_digest, key=f"sparsemac-{point.key}",
                             pure=False): point for point in points}
    bar = progress_bar(len(points), desc="sweep", unit="point")
    cancelled = 0
    try:
        for future in as_completed(futures, loop=client.loop):
            if future.status == "cancelled":
                # Lost with the scheduler, not failed: no row, so that a rerun computes it.
                cancelled += 1
                continue
            if future.status == "finished":
                result = future.result()
            else:
                result = PointResult.for_point(futures[future], spec_digest)
                error = future.exception()
                result.error = f"{type(error).__name__}: {error}"
            table.append(result)
            future.release()
            bar.update()
    finally:
        bar.close()
    if cancelled:
        raise RunFailure(f"{cancelled} of {len(points)} points were cancelled (did the Dask "
                           "scheduler stop?): run the same sweep again to compute them")
