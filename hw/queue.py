"""The queue: a first-word-through FIFO whose level is the difference of its two pointers."""

from amaranth.hdl import Module, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .errors import InputError

__all__ = ["Queue"]


class Queue(wiring.Component):
    """Holds up to ``depth`` beats in distributed (LUT) RAM, and says how many it holds.

    Unlike :class:`amaranth.lib.fifo.SyncFIFO`, which keeps its level in a register of its own
    beside the pointers, the level here is the difference of the write and read pointers (each a
    bit wider than an address), and the two other registers, ``full`` and ``held`` (the
    output's ``valid``), are worked out anew in every cycle from the pointers' next values. So
    ``ready``, ``valid`` and the payload's address are registers, and a state of the registers
    that disagrees with itself lasts at most one cycle: k-induction proves the handshakes of a
    block holding a queue without being told how the queue works. ``full`` means the depth or
    more apart, so even pointers further apart than a queue can be drain instead of writing
    over the beat on offer.

    Contract
    --------
    ``i_stream.ready`` is high while fewer than ``depth`` beats are held, ``o_stream.valid``
    while any is; ``o_stream.payload`` is the oldest beat. A beat taken on ``i_stream`` is
    counted in ``level`` and offered on ``o_stream`` from the next cycle.

    Parameters
    ----------
    shape : shape-like
        The payload.
    depth : int
        A power of two, at least 2.

    Raises
    ------
    ValueError
        If ``depth`` is not such a power of two (an integer).

    Attributes
    ----------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))
    level : Out(range(depth + 1))
        Beats held.
    """

    def __new__(cls, shape, depth, *args, **kwargs):
        # Refused before the object exists, so a bad depth leaves no "created but never used"
        # elaboratable behind to warn about.
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2 or \
                depth & (depth - 1):
            raise InputError(f"a queue's depth must be a power of two from 2, not {depth!r}")
        return super().__new__(cls, shape, depth, *args, src_loc_at=1, **kwargs)

    def __init__(self, shape, depth):
        self._shape = shape
        self._depth = depth
        super().__init__({"i_stream": In(stream.Signature(shape)),
                          "o_stream": Out(stream.Signature(shape)),
                          "level": Out(range(depth + 1))})

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        address_width = self._depth.bit_length() - 1
        m.submodules.storage = storage = memory.Memory(shape=self._shape, depth=self._depth,
                                                       init=[])
        write_port = storage.write_port()
        read_port = storage.read_port(domain="comb")
        # One wrap bit above the address: the pointers differ by the depth when it is full.
        write_pointer = Signal(address_width + 1)
        read_pointer = Signal(address_width + 1)
        full = Signal()
        held = Signal()
        take = self.i_stream.valid & self.i_stream.ready
        give = self.o_stream.valid & self.o_stream.ready
        next_write = (write_pointer + take)[:address_width + 1]
        next_read = (read_pointer + give)[:address_width + 1]
        m.d.sync += [
            write_pointer.eq(next_write),
            read_pointer.eq(next_read),
            # Depth or more: the pointers' difference has its top bit set.
            full.eq((next_write - next_read)[address_width]),
            held.eq(next_write != next_read),
        ]
        m.d.comb += [
            self.level.eq(write_pointer - read_pointer),
            self.i_stream.ready.eq(~full),
            self.o_stream.valid.eq(held),
            write_port.addr.eq(write_pointer[:address_width]),
            write_port.data.eq(self.i_stream.payload),
            write_port.en.eq(take),
            read_port.addr.eq(read_pointer[:address_width]),
            self.o_stream.payload.eq(read_port.data),
        ]
        return m
