"""The CSR weight streamer: CSR arrays in bus words to row-aligned chunks of K nonzeros."""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import ArrayConfig
from .formats import CoreFormats, Mode

__all__ = ["CSRWeightStreamer"]


class CSRWeightStreamer(wiring.Component):
    """Realigns a packed stream of weights to rows and emits up to K of them per cycle.

    The column and value words pack the nonzeros of a whole token block back to back, K per
    word, so a row may start anywhere in a word. A gearbox of 2K entries holds the words; each
    cycle it hands the next ``min(K, left in row)`` entries of the current row to ``chunks``
    and refills itself with a whole word while at most K entries remain. That keeps at least K
    entries (or the rest of the block) ready, so with ideal input streams a row of n nonzeros
    takes exactly ``max(1, ceil(n / K))`` cycles and rows follow each other without a bubble.

    In dense mode there are no row pointers or column words: every row has ``cols`` weights and
    lane i of a chunk holds column ``base + i``.

    Contract
    --------
    A job begins with ``start`` high for one cycle while idle, with ``job`` valid in that cycle.
    The streamer then takes ``token_blocks`` passes over the matrix. Per pass it reads ``rows``
    row end pointers (sparse mode only) and ``ceil(nnz / K)`` value words (and as many column
    words in sparse mode); lanes past ``nnz`` in the last word of a pass are padding and are
    dropped. The last row end pointer of a pass must equal ``nnz``, and the host checks this;
    a job that breaks it waits for data that never comes.

    Attributes
    ----------
    start : In(1)
        Begin the job in ``job``.
    job : In(formats.job)
        The job parameters, sampled when ``start`` is high.
    row_pointers : In(stream.Signature(formats.row_pointer))
    columns : In(stream.Signature(formats.column_word))
    values : In(stream.Signature(formats.value_word))
    chunks : Out(stream.Signature(formats.chunk))
        Up to K (column, value) pairs of one row; unused lanes have value 0. ``row_last`` marks
        the last chunk of a row (an empty row is one chunk of zeros), ``block_last`` the last
        chunk of a pass.
    busy : Out(1)
        High from ``start`` until the last chunk of the job has been emitted.
    """

    def __init__(self, config):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        self._config = config
        self._formats = formats = CoreFormats(config)
        super().__init__({
            "start": In(1),
            "job": In(formats.job),
            "row_pointers": In(stream.Signature(formats.row_pointer)),
            "columns": In(stream.Signature(formats.column_word)),
            "values": In(stream.Signature(formats.value_word)),
            "chunks": Out(stream.Signature(formats.chunk)),
            "busy": Out(1),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        lanes = self._config.lanes
        depth = 2 * lanes
        job_layout = self._formats.job

        job = Signal(job_layout)
        sparse = job.mode == Mode.SPARSE

        # Gearbox: entries [0, occupancy) are the next weights of the stream, oldest first.
        value_shape = self._formats.value_word.elem_shape
        column_shape = self._formats.column_word.elem_shape
        buffer_values = [Signal(value_shape, name=f"value{i}") for i in range(depth)]
        buffer_columns = [Signal(column_shape, name=f"column{i}") for i in range(depth)]
        occupancy = Signal(range(depth + 1))

        # Emit side: which row of which pass, and how much of it is left.
        blocks_to_emit = Signal.like(job.token_blocks)
        row_index = Signal.like(job.rows)
        previous_end = Signal(self._formats.row_pointer)
        row_left = Signal(self._formats.row_pointer)
        next_column = Signal.like(job.cols)

        # Fetch side: weights of the current pass still to be fetched, and passes after it.
        fetch_left = Signal.like(job.nnz)
        blocks_to_fetch = Signal.like(job.token_blocks)

        in_row = row_left != 0
        new_row_length = Mux(sparse, self.row_pointers.payload - previous_end, job.cols)
        length = Mux(in_row, row_left, new_row_length)
        take = Signal(range(lanes + 1))
        m.d.comb += take.eq(Mux(length > lanes, lanes, length))
        length_known = in_row | ~sparse | self.row_pointers.valid
        output_free = ~self.chunks.valid | self.chunks.ready
        emit = Signal()
        m.d.comb += emit.eq(self.busy & output_free & length_known & (occupancy >= take))
        consumed = Mux(emit, take, 0)
        kept = Signal(range(depth + 1))
        m.d.comb += kept.eq(occupancy - consumed)

        # Fetch a whole word while it fits behind the entries kept this cycle.
        can_fetch = (fetch_left != 0) & (kept <= lanes)
        m.d.comb += [
            self.values.ready.eq(can_fetch & (self.columns.valid | ~sparse)),
            self.columns.ready.eq(can_fetch & self.values.valid & sparse),
        ]
        fetch = Signal()
        m.d.comb += fetch.eq(self.values.valid & self.values.ready)
        fetched = Signal(range(lanes + 1))
        m.d.comb += fetched.eq(Mux(fetch_left > lanes, lanes, fetch_left))

        value_source = Array(buffer_values + [0] * lanes)
        column_source = Array(buffer_columns + [0] * lanes)
        word_values = Array(self.values.payload[i] for i in range(lanes))
        word_columns = Array(self.columns.payload[i] for i in range(lanes))
        for i in range(depth):
            from_word = (kept <= i) & (i < kept + fetched)
            with m.If(kept > i):
                m.d.sync += [
                    buffer_values[i].eq(value_source[i + consumed]),
                    buffer_columns[i].eq(column_source[i + consumed]),
                ]
            with m.Elif(fetch & from_word):
                m.d.sync += [
                    buffer_values[i].eq(word_values[i - kept]),
                    buffer_columns[i].eq(word_columns[i - kept]),
                ]
        m.d.sync += occupancy.eq(kept + Mux(fetch, fetched, 0))

        with m.If(fetch):
            with m.If(fetch_left > lanes):
                m.d.sync += fetch_left.eq(fetch_left - lanes)
            with m.Elif(blocks_to_fetch != 0):
                m.d.sync += [
                    fetch_left.eq(job.nnz),
                    blocks_to_fetch.eq(blocks_to_fetch - 1),
                ]
            with m.Else():
                m.d.sync += fetch_left.eq(0)

        column_base = Mux(in_row, next_column, 0)
        rest = length - take
        row_last = rest == 0
        block_last = row_last & (row_index == job.rows - 1)
        m.d.comb += self.row_pointers.ready.eq(emit & ~in_row & sparse)
        with m.If(emit):
            for i in range(lanes):
                m.d.sync += [
                    self.chunks.payload.values[i].eq(Mux(take > i, buffer_values[i], 0)),
                    self.chunks.payload.columns[i].eq(
                        Mux(sparse, buffer_columns[i], column_base + i)),
                ]
            m.d.sync += [
                self.chunks.valid.eq(1),
                self.chunks.payload.row_last.eq(row_last),
                self.chunks.payload.block_last.eq(block_last),
                row_left.eq(rest),
                next_column.eq(column_base + lanes),
            ]
            with m.If(self.row_pointers.ready):
                m.d.sync += previous_end.eq(self.row_pointers.payload)
            with m.If(block_last):
                m.d.sync += [
                    row_index.eq(0),
                    previous_end.eq(0),
                    blocks_to_emit.eq(blocks_to_emit - 1),
                ]
                with m.If(blocks_to_emit == 1):
                    m.d.sync += self.busy.eq(0)
            with m.Elif(row_last):
                m.d.sync += row_index.eq(row_index + 1)
        with m.Elif(self.chunks.ready):
            m.d.sync += self.chunks.valid.eq(0)

        with m.If(self.start & ~self.busy):
            m.d.sync += [
                job.eq(self.job),
                self.busy.eq(1),
                blocks_to_emit.eq(self.job.token_blocks),
                row_index.eq(0),
                row_left.eq(0),
                previous_end.eq(0),
                fetch_left.eq(self.job.nnz),
                blocks_to_fetch.eq(self.job.token_blocks - 1),
            ]

        return m
