"""The fixtures shared by the test modules; their helpers are in helpers.py."""

import signal

import pytest

#: Seconds a simulation test may take before it is failed as a deadlock (they take about 1).
SIM_DEADLINE = 60


@pytest.fixture
def sim_deadline():
    """Fail a test still running after SIM_DEADLINE seconds: a deadlocked core would otherwise
    hang the run, as ``run_core_job`` waits for its sums without a watchdog."""
    def expire(signum, frame):
        raise TimeoutError(f"simulation still running after {SIM_DEADLINE} s: a deadlock?")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(SIM_DEADLINE)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
