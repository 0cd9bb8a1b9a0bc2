"""Valid/ready stream agents for cocotb: a driver, a monitor and a back-pressure generator.

The agents follow ``amaranth.lib.stream``: a beat moves in a cycle whose rising edge sees both
``valid`` and ``ready`` high. Ports are found by the names Amaranth gives a component's stream
members: ``<name>__payload``, ``<name>__valid``, ``<name>__ready``.

Stalls come from *pause generators* (as in cocotbext-axi): infinite iterators of booleans, one
per clock cycle, True meaning "pause this cycle". A driver pauses by dropping ``valid`` before a
beat, a back-pressure generator by dropping ``ready``. :func:`random_pauses` draws them from a
seeded :class:`random.Random`, so every stall pattern replays from the test's seed.
"""

import itertools

import cocotb
from cocotb.triggers import Event, RisingEdge

from ...hw.errors import InputError

__all__ = ["no_pauses", "random_pauses", "StreamDriver", "StreamMonitor", "BackPressure"]


def no_pauses():
    """A pause generator that never pauses: an ideal source or an always-ready sink."""
    return itertools.repeat(False)


def random_pauses(rng, probability, max_burst=4):
    """Pauses in random bursts: before each burst, one draw against ``probability``.

    Parameters
    ----------
    rng : random.Random
        The only source of randomness, so the pattern is replayable from its seed.
    probability : float
        Chance, per cycle, that a pause burst starts. 0 never pauses.
    max_burst : int
        A burst lasts 1 to ``max_burst`` cycles (uniformly).

    Yields
    ------
    bool
        True for a cycle of pause.
    """
    if not 0 <= probability < 1:
        raise InputError(f"pause probability must be in [0, 1), not {probability!r}")
    while True:
        if probability and rng.random() < probability:
            for _ in range(rng.randint(1, max_burst)):
                yield True
        else:
            yield False


def _stream_ports(dut, name):
    return (getattr(dut, f"{name}__payload"), getattr(dut, f"{name}__valid"),
            getattr(dut, f"{name}__ready"))


class StreamDriver:
    """Sends integer payloads on the input stream ``name`` of ``dut``.

    Parameters
    ----------
    dut : cocotb handle
    name : str
        The stream's member name, e.g. ``"values"``.
    clock : cocotb handle
    pauses : iterator of bool, optional
        When to hold ``valid`` low before a beat; default: never. Assign
        :attr:`pauses` to change it between transfers.
    """

    def __init__(self, dut, name, clock, pauses=None):
        self.name = name
        self.clock = clock
        self.payload, self.valid, self.ready = _stream_ports(dut, name)
        self.pauses = no_pauses() if pauses is None else pauses
        self.valid.value = 0

    async def send(self, beats):
        """Sends every beat in order; returns after the last one has been accepted."""
        for beat in beats:
            while next(self.pauses):
                self.valid.value = 0
                await RisingEdge(self.clock)
            self.payload.value = beat
            self.valid.value = 1
            await RisingEdge(self.clock)
            while not self.ready.value:
                await RisingEdge(self.clock)
        self.valid.value = 0


class StreamMonitor:
    """Watches the stream ``name`` of ``dut`` and reports every beat that moves.

    It drives nothing, so it can watch an input, an output or an internal stream.

    Parameters
    ----------
    dut : cocotb handle
    name : str
    clock : cocotb handle
    callback : callable(int), optional
        Called with each beat's payload as an unsigned integer; assign :attr:`callback` to
        redirect beats, e.g. to the scoreboard of the next job.

    Attributes
    ----------
    count : int
        Beats seen so far.
    """

    def __init__(self, dut, name, clock, callback=None):
        self.name = name
        self.clock = clock
        self.payload, self.valid, self.ready = _stream_ports(dut, name)
        self.callback = callback
        self.count = 0
        self._beat_seen = Event()
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await RisingEdge(self.clock)
            if self.valid.value and self.ready.value:
                self.count += 1
                if self.callback is not None:
                    self.callback(self.payload.value.to_unsigned())
                self._beat_seen.set()

    async def wait_for(self, count):
        """Returns once :attr:`count` has reached ``count``."""
        while self.count < count:
            self._beat_seen.clear()
            await self._beat_seen.wait()


class BackPressure:
    """Drives ``ready`` of the output stream ``name`` of ``dut`` from a pause generator.

    Parameters
    ----------
    dut : cocotb handle
    name : str
    clock : cocotb handle
    pauses : iterator of bool, optional
        When to refuse a beat; default: never (always ready). Assign :attr:`pauses` to change.
    """

    def __init__(self, dut, name, clock, pauses=None):
        self.clock = clock
        _, _, self.ready = _stream_ports(dut, name)
        self.pauses = no_pauses() if pauses is None else pauses
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            self.ready.value = 0 if next(self.pauses) else 1
            await RisingEdge(self.clock)
