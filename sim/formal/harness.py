"""The formal harness: a block with its ports left free, the stream protocol and a property set.

A harness is a component with the same signature as the block it checks. Its ports become the
top-level ports of the RTLIL, so every input is free in every cycle (the solver picks it) and
the assumptions alone say what the environment does. The block itself is elaborated unchanged:
the properties sit in the harness, beside it, so the design that is built is the one proved.
"""

from amaranth.hdl import Assert, Assume, Module, ResetSignal, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, flipped

from ...hw.errors import InputError

__all__ = ["Harness", "stream_ports", "stream_protocol", "transfer", "count"]


def stream_ports(interface, prefix=""):
    """``(name, port, is_input)`` for every ``lib.stream`` port of ``interface``'s signature,
    those of nested signatures (a bundle of streams) included, named ``outer__inner``."""
    for name, member in interface.signature.members.items():
        if not member.is_signature:
            continue
        port = getattr(interface, name)
        if isinstance(member.signature, stream.Signature):
            yield f"{prefix}{name}", port, member.flow == In
        else:
            yield from stream_ports(port, f"{prefix}{name}__")


def transfer(port):
    """High in a cycle in which ``port`` moves a beat."""
    return port.valid & port.ready


def stream_protocol(m, name, port, is_input):
    """The valid/ready rule on ``port``: assumed of the environment on an input, asserted of the
    block on an output.

    Once ``valid`` is high without ``ready`` it stays high in the next cycle, with the same
    payload. Returns the condition (high when the rule holds this cycle).
    """
    payload = Value.cast(port.payload)
    waiting = Signal(name=f"{name}_waiting")
    held = Signal(len(payload), name=f"{name}_held")
    m.d.sync += [waiting.eq(port.valid & ~port.ready), held.eq(payload)]
    holds = ~waiting | (port.valid & (payload == held))
    if is_input:
        m.d.comb += Assume(holds)
    else:
        m.d.comb += Assert(holds, f"{name}: valid dropped or payload changed before ready")
    return holds


def count(m, name, width, increment, clear=0):
    """A counter of the cycles in which ``increment`` is high, zeroed (to that cycle's
    increment) when ``clear`` is high. Returns the counter's signal."""
    counter = Signal(width, name=name)
    with m.If(clear):
        m.d.sync += counter.eq(increment)
    with m.Else():
        m.d.sync += counter.eq(counter + increment)
    return counter


class Harness(wiring.Component):
    """Wraps a block for formal verification.

    Subclasses name the block in ``DUT``, list their property sets in ``PROPERTIES`` (name to a
    one-line description) and implement ``check_<name>(m)`` for each. Every property set also
    gets the stream protocol, assumed on the block's input streams; ``protocol`` asserts it on
    the outputs and nothing else, so it is the set proved by k-induction.

    The reset is held low: the solver starts from the registers' initial values, which is the
    state reset puts them in.

    Parameters
    ----------
    dut : wiring.Component
        The block (or a broken variant with the same signature).
    prop : str
        The property set to elaborate.
    """

    DUT = None
    PROPERTIES = {"protocol": "valid held with a stable payload until ready, on every output"}

    @classmethod
    def make_dut(cls, config):
        """The block to check, for ``config``."""
        return cls.DUT(config)

    def __init__(self, dut, prop):
        if prop not in self.PROPERTIES:
            raise InputError(f"{type(self).__name__} has no property {prop!r}; "
                             f"known: {', '.join(self.PROPERTIES)}")
        self._dut = dut
        self._prop = prop
        self.config = dut.config
        super().__init__(dict(dut.signature.members.items()))

    @property
    def dut(self):
        return self._dut

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self._dut
        wiring.connect(m, flipped(self), self._dut)
        m.d.comb += Assume(~ResetSignal())
        for name, port, is_input in stream_ports(self):
            if is_input or self._prop == "protocol":
                stream_protocol(m, name, port, is_input)
        self.environment(m)
        if self._prop != "protocol":
            getattr(self, f"check_{self._prop}")(m)
        return m

    def environment(self, m):
        """Assumptions about the block's inputs beyond the stream protocol (none here)."""
