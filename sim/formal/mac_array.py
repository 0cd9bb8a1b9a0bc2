"""Formal harness of :class:`~sparsemac.hw.mac_array.MACArray`."""

from amaranth.hdl import Assert, Cover, Signal

from ...hw.mac_array import MACArray
from .harness import Harness, count, transfer

__all__ = ["MACArrayHarness", "pipeline_stages"]


def pipeline_stages(config):
    """Registers between an accepted ``operands`` beat and its ``sums`` beat: three, and the
    multipliers' operand registers with ``registered``."""
    return 3 + config.registered


class MACArrayHarness(Harness):
    """Rows in equal sums out, whatever the back-pressure.

    ``rows``: a ``sums`` beat leaves only for a row closed by an accepted ``row_last`` beat, at
    most :func:`pipeline_stages` rows are in flight (so none is dropped while the pipeline is
    held), and once no beat has been accepted for that many cycles with ``sums`` ready, every
    closed row has left. Counter-based; bounded (the counters make induction unbounded).
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
        # Consecutive cycles, up to the pipeline depth, with nothing accepted and sums ready.
        quiet = Signal(range(stages + 1))
        with m.If(transfer(self.operands) | ~self.sums.ready):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != stages):
            m.d.sync += quiet.eq(quiet + 1)
        m.d.comb += [
            Assert(~self.sums.valid | (in_flight != 0), "sums beat without a closed row"),
            Assert(in_flight <= stages, "more rows in flight than pipeline stages"),
            Assert((quiet != stages) | (in_flight == 0),
                   "a closed row did not leave after the pipeline drained"),
        ]

    def check_cover(self, m):
        in_flight = self._in_flight(m)
        m.d.comb += [
            Cover(transfer(self.sums)),
            Cover(self.sums.valid & ~self.sums.ready & (in_flight == 2)),
        ]
