"""Formal harness of :class:`~sparsemac.hw.mac_array.MACArray`."""

from amaranth.hdl import Assert, Cover, Signal

from ...hw.mac_array import SUMS_QUEUE_DEPTH, MACArray
from .harness import Harness, count, transfer

__all__ = ["MACArrayHarness", "pipeline_stages", "rows_held"]


def pipeline_stages(config):
    """Registers between an accepted ``operands`` beat and its ``sums`` beat: three, and the
    fanout stage, the multipliers' operand registers and the landed products with
    ``registered``."""
    return 3 + 3 * config.registered


def rows_held(config):
    """The most closed rows the array holds: one per pipeline stage, or with ``registered``
    its queue of sums (the pipeline itself never holds then)."""
    return SUMS_QUEUE_DEPTH if config.registered else pipeline_stages(config)


class MACArrayHarness(Harness):
    """Rows in equal sums out, whatever the back-pressure.

    ``rows``: a ``sums`` beat leaves only for a row closed by an accepted ``row_last`` beat, at
    most :func:`rows_held` rows are in flight (so none is dropped while the pipeline is held or
    the queue is full), and once no beat has been accepted for :func:`pipeline_stages` cycles
    (with ``sums`` ready, where back-pressure holds the pipeline), every closed row has left or,
    with ``registered``, is on offer. Counter-based; bounded (the counters make induction
    unbounded).
    """

    DUT = MACArray
    PROPERTIES = {
        **Harness.PROPERTIES,
        "rows": "one sums beat per row_last beat, nothing lost under back-pressure",
        "cover": "a row leaves; sums back-pressured while a row is in flight",
    }

    def _in_flight(self, m):
        closed = transfer(self.operands) & self.operands.payload.row_last
        rows_in = count(m, "rows_in", 8, closed)
        sums_out = count(m, "sums_out", 8, transfer(self.sums))
        return (rows_in - sums_out)[:8]

    def check_rows(self, m):
        in_flight = self._in_flight(m)
        stages = pipeline_stages(self.config)
        registered = self.config.registered
        # Consecutive cycles, up to the pipeline depth, with nothing accepted (and sums ready,
        # unless the pipeline never holds).
        quiet = Signal(range(stages + 1))
        with m.If(transfer(self.operands) | (~self.sums.ready if not registered else 0)):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != stages):
            m.d.sync += quiet.eq(quiet + 1)
        drained = (self.sums.valid == (in_flight != 0)) if registered else (in_flight == 0)
        m.d.comb += [
            Assert(~self.sums.valid | (in_flight != 0), "sums beat without a closed row"),
            Assert(in_flight <= rows_held(self.config), "more rows in flight than it can hold"),
            Assert((quiet != stages) | drained,
                   "a closed row did not leave after the pipeline drained"),
        ]

    def check_cover(self, m):
        in_flight = self._in_flight(m)
        m.d.comb += [
            Cover(transfer(self.sums)),
            Cover(self.sums.valid & ~self.sums.ready & (in_flight == 2)),
        ]
