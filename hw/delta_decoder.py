"""The delta decoder: turns the delta codes of a row-aligned chunk into column addresses."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from .component import JobComponent
from .formats import ColumnIndex
from .errors import InputError

__all__ = ["DeltaDecoder"]


class DeltaDecoder(JobComponent):
    """Decodes the :class:`~sparsemac.hw.formats.DeltaCode` of a delta job's chunks at full rate.

    Sits between the streamer and the activation buffer. Each lane's column is the row's next
    free column plus the prefix sum of the lanes' steps, minus one; escape lanes leave with value
    0. The prefix sum is a Kogge-Stone scan, log2(K) adders deep. The decoder is combinational
    from its input to its output, so it adds no cycle and no bubble; its one register, the
    row's next free column, moves when a chunk is taken and returns to 0 after ``row_last``.
    Chunks of a CSR job pass through unchanged.

    Contract
    --------
    ``start`` (one cycle, while ``job`` is valid) begins a job. A chunk that is not the last of
    its row uses all K lanes (the streamer's row-aligned chunks do); unused lanes of a last
    chunk hold value 0 and any code.

    Attributes
    ----------
    start, job
        As in :class:`~sparsemac.hw.component.JobComponent`.
    i_stream : In(stream.Signature(formats.coded_chunk))
        The streamer's chunks: delta codes in place of columns in a delta job.
    o_stream : Out(stream.Signature(formats.chunk))
        The same chunks with their column addresses, in the same cycle.

    Raises
    ------
    ValueError
        If the config has no delta decoder (``delta_bits == 0``).
    """

    @classmethod
    def check(cls, config):
        super().check(config)
        if not config.delta_bits:
            raise InputError(f"{config.key()} has no delta decoder: set ArrayConfig.delta_bits")

    def streams(self, formats):
        return {
            "i_stream": In(stream.Signature(formats.coded_chunk)),
            "o_stream": Out(stream.Signature(formats.chunk)),
        }

    def elaborate(self, platform):
        m = Module()
        lanes, code = self._config.lanes, self._formats.delta
        address_width = self._config.column_address_width
        coded, decoded = self.i_stream.payload, self.o_stream.payload

        delta = Signal()
        with m.If(self.start):
            m.d.sync += delta.eq(self.job.index == ColumnIndex.DELTA)

        # Steps reach escape + 255 per lane; the sums only ever need the low address bits, as
        # a real column is below max_in_features and unused lanes are never read with weight.
        width = address_width + 1
        next_column = Signal(width)
        steps = [code.step(coded.columns[lane][:code.bits], coded.values[lane])
                 for lane in range(lanes)]
        sums = [step.as_unsigned()[:width] for step in steps]
        distance = 1
        while distance < lanes:
            sums = [total if lane < distance else (total + sums[lane - distance])[:width]
                    for lane, total in enumerate(sums)]
            distance *= 2

        m.d.comb += [
            self.o_stream.valid.eq(self.i_stream.valid),
            self.i_stream.ready.eq(self.o_stream.ready),
            decoded.row_last.eq(coded.row_last),
            decoded.block_last.eq(coded.block_last),
        ]
        for lane in range(lanes):
            escape = coded.columns[lane][:code.bits] == code.escape
            m.d.comb += [
                decoded.columns[lane].eq(Mux(delta, next_column + sums[lane] - 1,
                                             coded.columns[lane])),
                decoded.values[lane].eq(Mux(delta & escape, 0, coded.values[lane])),
            ]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += next_column.eq(Mux(coded.row_last, 0, next_column + sums[-1]))
        with m.If(self.start):
            m.d.sync += next_column.eq(0)

        return m
