"""The CSR weight streamer: CSR arrays in bus words to row-aligned chunks of K nonzeros."""

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from .component import ArrayComponent
from .formats import ColumnIndex, Mode

__all__ = ["CSRWeightStreamer"]


class CSRWeightStreamer(ArrayComponent):
    """Realigns a packed stream of weights to rows and emits up to K of them per cycle.

    The column and value words pack the nonzeros of a whole token block back to back, K per
    word, so a row may start anywhere in a word. The words go into a ring of at least 3K
    entries whenever it holds at most 2K; each cycle the next ``min(K, left in row)`` entries of
    the current row leave as a chunk. That keeps at least K entries (or the rest of the block)
    ready, so with ideal input streams a row of n nonzeros takes exactly ``max(1, ceil(n / K))``
    cycles and rows follow each other without a bubble. Row lengths are worked out from the
    row end pointers one row ahead, and every wide multiplexer is selected by registers (the
    ring pointers), which keeps the streamer off the critical path of the core.

    In dense mode there are no row pointers or column words: every row has ``cols`` weights and
    lane i of a chunk holds column ``base + i``. A delta job (an array with the delta decoder,
    ``index`` DELTA) sends row lengths instead of row end pointers and delta words instead of
    column words, each in the low bits of its beat; its chunks carry the codes, and
    :class:`~sparsemac.hw.delta_decoder.DeltaDecoder` makes columns of them.

    With ``span_rows`` a sparse row's last chunk also carries the first entries of the next row
    of the pass, all but that row's last one, and its ``split`` says where the rows meet
    (:func:`sparsemac.sw.cycle_model.pass_chunks` lists the chunks of a pass). To know the next
    row while the row before it ends, every sparse row is taken into the row registers before
    its first chunk (the job's first row one cycle after its pointer, every other one as the
    row before it closes), and a closing chunk waits for the next row's length, so the chunks
    depend on the row lengths alone, never on the input timing.

    Contract
    --------
    A job begins with ``start`` high for one cycle while idle, with ``job`` valid in that cycle.
    The streamer then takes ``token_blocks`` passes over the matrix. Per pass it reads ``rows``
    row end pointers (sparse mode only) and ``ceil(nnz / K)`` value words (and as many column
    words in sparse mode); lanes past ``nnz`` in the last word of a pass are padding and are
    dropped. The last row end pointer of a pass must equal ``nnz``, and the host checks this;
    a job that breaks it waits for data that never comes. With every input valid the first
    chunk is valid in the third cycle after ``start`` (the fourth in a sparse job with
    ``span_rows``).

    Attributes
    ----------
    start : In(1)
        Begin the job in ``job``.
    job : In(formats.job)
        The job parameters, sampled when ``start`` is high.
    row_pointers : In(stream.Signature(formats.row_pointer))
    columns : In(stream.Signature(formats.column_word))
    values : In(stream.Signature(formats.value_word))
    chunks : Out(stream.Signature(formats.coded_chunk))
        Up to K (column, value) pairs of one row (with ``span_rows``, of one row and the head of
        the next); unused lanes have value 0. ``row_last`` marks the last chunk of a row (an
        empty row is one chunk of zeros), ``block_last`` the last chunk of a pass.
    busy : Out(1)
        High from ``start`` until the last chunk of the job has been emitted.
    """

    def members(self, formats):
        return {
            "start": In(1),
            "job": In(formats.job),
            "row_pointers": In(stream.Signature(formats.row_pointer)),
            "columns": In(stream.Signature(formats.column_word)),
            "values": In(stream.Signature(formats.value_word)),
            "chunks": Out(stream.Signature(formats.coded_chunk)),
            "busy": Out(1),
        }

    def elaborate(self, platform):
        m = Module()
        lanes = self._config.lanes
        formats = self._formats
        # Fetching while at most 2K entries are held needs room for 3K; a power of two makes
        # the ring pointers wrap for free.
        ring_size = 1 << (3 * lanes - 1).bit_length()
        pointer_width = ring_size.bit_length() - 1

        def at_most_lanes(value):
            return Mux(value > lanes, lanes, value)

        job = Signal(formats.job)
        sparse = job.mode == Mode.SPARSE

        # The ring: entries [read_pointer, read_pointer + occupancy) are the next weights.
        ring_values = Array(Signal(formats.value_word.elem_shape, name=f"value{i}")
                            for i in range(ring_size))
        ring_columns = Array(Signal(formats.column_word.elem_shape, name=f"column{i}")
                             for i in range(ring_size))
        read_pointer = Signal(pointer_width)
        write_pointer = Signal(pointer_width)
        occupancy = Signal(range(3 * lanes + 1))

        # Fetch side: a whole word whenever at most 2K entries are held. How much the next word
        # brings, min(K, fetch_left), and whether any is left are registers, worked out when
        # fetch_left changes: the input streams' valid then reaches the ring's write enables
        # through one gate instead of through the arithmetic on fetch_left.
        fetch_left = Signal.like(job.nnz)
        fetch_count = Signal(range(lanes + 1))
        fetch_pending = Signal()
        blocks_to_fetch = Signal.like(job.token_blocks)
        can_fetch = fetch_pending & (occupancy <= 2 * lanes)
        m.d.comb += [
            self.values.ready.eq(can_fetch & (self.columns.valid | ~sparse)),
            self.columns.ready.eq(can_fetch & self.values.valid & sparse),
        ]
        fetch = self.values.valid & self.values.ready
        fetched = Mux(fetch, fetch_count, 0)
        word_values = Array(self.values.payload[i] for i in range(lanes))
        word_columns = Array(self.columns.payload[i] for i in range(lanes))
        if formats.delta is not None:
            delta = job.index == ColumnIndex.DELTA
            codes = formats.delta_word(self.columns.payload.as_value()[:formats.delta_word.size])
            word_columns = Array(Mux(delta, codes[i], self.columns.payload[i])
                                 for i in range(lanes))
        for entry in range(ring_size):
            offset = (entry - write_pointer)[:pointer_width]
            with m.If(fetch & (offset < fetch_count)):
                m.d.sync += [
                    ring_values[entry].eq(word_values[offset]),
                    ring_columns[entry].eq(word_columns[offset]),
                ]
        m.d.sync += write_pointer.eq(write_pointer + fetched)

        def set_fetch_left(value):
            m.d.sync += [
                fetch_left.eq(value),
                fetch_count.eq(at_most_lanes(value)),
                fetch_pending.eq(value != 0),
            ]

        with m.If(fetch):
            with m.If(fetch_left > lanes):
                set_fetch_left(fetch_left - lanes)
            with m.Elif(blocks_to_fetch != 0):
                set_fetch_left(job.nnz)
                m.d.sync += blocks_to_fetch.eq(blocks_to_fetch - 1)
            with m.Else():
                set_fetch_left(0)

        # The length of the next row, worked out one row ahead. Dense rows are all ``cols``
        # long, so in dense mode it is set once per job and never consumed.
        next_valid = Signal()
        next_length = Signal(formats.row_pointer)
        next_take = Signal(range(lanes + 1))
        pointer_row = Signal.like(job.rows)
        pointer_blocks = Signal.like(job.token_blocks)
        previous_end = Signal(formats.row_pointer)
        span = self._config.span_rows
        if span:
            # The most entries of the next row a chunk may carry: all but its last one.
            next_head = Signal(range(lanes))
            # Whether the row being emitted is the last of its pass, and whether it ends in
            # its next chunk (row_left <= K): registers, so the span decision waits for no
            # compare of the row counter or of the 32-bit row length.
            on_last_row = Signal()
            row_ends = Signal()

        # The row being emitted.
        in_row = Signal()
        row_left = Signal(formats.row_pointer)
        row_take = Signal(range(lanes + 1))
        row_index = Signal.like(job.rows)
        blocks_to_emit = Signal.like(job.token_blocks)
        next_column = Signal.like(job.cols)

        row_part = Mux(in_row, row_take, next_take)
        length = Mux(in_row, row_left, next_length)
        take = row_part
        row_ready = in_row | next_valid
        if span:
            # In sparse mode a row is always taken into the registers of the row being emitted
            # (``prime`` for the job's first row, then each row as the one before it closes),
            # so the look-ahead register holds the row after it: a row's last chunk is then
            # filled up with the head of that next row of the pass when it has entries to spare
            # (all but its last one; not after an empty row). A closing chunk waits for the
            # next row's length unless no row follows in the job, so the chunks never depend on
            # the input timing.
            prime = Signal()
            spanning = Signal()
            extra = Signal(range(lanes))
            m.d.comb += [
                prime.eq(sparse & self.busy & ~in_row & next_valid),
                # row_take is row_left up to K: neither 0 nor K, the row ends here with room.
                spanning.eq(sparse & in_row & (row_take != lanes) & (row_take != 0)
                            & ~on_last_row & next_valid & (next_head != 0)),
                extra.eq(Mux(spanning, Mux(lanes - row_take > next_head, next_head,
                                           lanes - row_take), 0)),
            ]
            take = row_part + extra
            row_ready = Mux(sparse, in_row & (~row_ends | next_valid | (pointer_blocks == 0)),
                            row_ready)
        output_free = ~self.chunks.valid | self.chunks.ready
        emit = Signal()
        m.d.comb += emit.eq(self.busy & output_free & row_ready & (occupancy >= take))
        consumed = Mux(emit, take, 0)
        m.d.sync += [
            read_pointer.eq(read_pointer + consumed),
            occupancy.eq(occupancy - consumed + fetched),
        ]

        if span:
            next_consumed = prime | (emit & sparse & row_ends & next_valid)
        else:
            next_consumed = emit & ~in_row & sparse
        m.d.comb += self.row_pointers.ready.eq(
            sparse & (pointer_blocks != 0) & (~next_valid | next_consumed))
        with m.If(self.row_pointers.valid & self.row_pointers.ready):
            row_length = self.row_pointers.payload - previous_end
            if formats.delta is not None:
                length_width = formats.delta.row_length.width
                row_length = Mux(delta, self.row_pointers.payload[:length_width], row_length)
            m.d.sync += [
                next_valid.eq(1),
                next_length.eq(row_length),
                next_take.eq(at_most_lanes(row_length)),
            ]
            if span:
                m.d.sync += next_head.eq(Mux(row_length >= lanes, lanes - 1,
                                             Mux(row_length != 0, row_length - 1, 0)))
            with m.If(pointer_row == job.rows - 1):
                m.d.sync += [
                    pointer_row.eq(0),
                    previous_end.eq(0),
                    pointer_blocks.eq(pointer_blocks - 1),
                ]
            with m.Else():
                m.d.sync += [
                    pointer_row.eq(pointer_row + 1),
                    previous_end.eq(self.row_pointers.payload),
                ]
        with m.Elif(next_consumed):
            m.d.sync += next_valid.eq(0)

        column_base = Mux(in_row, next_column, 0)
        rest = length - row_part
        row_last = rest == 0
        block_last = row_last & (row_index == job.rows - 1)
        with m.If(emit):
            for lane in range(lanes):
                entry = (read_pointer + lane)[:pointer_width]
                m.d.sync += [
                    self.chunks.payload.values[lane].eq(
                        Mux(take > lane, ring_values[entry], 0)),
                    self.chunks.payload.columns[lane].eq(
                        Mux(sparse, ring_columns[entry], column_base + lane)),
                ]
            m.d.sync += [
                self.chunks.valid.eq(1),
                self.chunks.payload.row_last.eq(row_last),
                self.chunks.payload.block_last.eq(block_last),
                in_row.eq(~row_last),
                row_left.eq(rest),
                row_take.eq(at_most_lanes(rest)),
                next_column.eq(column_base + lanes),
            ]
            if span:
                head_left = next_length - extra
                m.d.sync += self.chunks.payload.split.eq(Mux(spanning, row_take, lanes))
                with m.If(sparse):
                    m.d.sync += row_ends.eq(rest <= lanes)
                    # The next row (its head already sent if the chunk spans) follows at once.
                    with m.If(row_last):
                        m.d.sync += [
                            in_row.eq(next_valid),
                            row_left.eq(head_left),
                            row_take.eq(at_most_lanes(head_left)),
                            row_ends.eq(head_left <= lanes),
                        ]
                with m.If(block_last):
                    m.d.sync += on_last_row.eq(job.rows == 1)
                with m.Elif(row_last):
                    m.d.sync += on_last_row.eq(row_index + 2 == job.rows)
            with m.If(block_last):
                m.d.sync += [
                    row_index.eq(0),
                    blocks_to_emit.eq(blocks_to_emit - 1),
                ]
                with m.If(blocks_to_emit == 1):
                    m.d.sync += self.busy.eq(0)
            with m.Elif(row_last):
                m.d.sync += row_index.eq(row_index + 1)
        with m.Elif(self.chunks.ready):
            m.d.sync += self.chunks.valid.eq(0)
        if span:
            with m.If(prime):
                m.d.sync += [
                    in_row.eq(1),
                    row_left.eq(next_length),
                    row_take.eq(next_take),
                    row_ends.eq(next_length <= lanes),
                ]

        with m.If(self.start & ~self.busy):
            dense = self.job.mode == Mode.DENSE
            set_fetch_left(self.job.nnz)
            m.d.sync += [
                job.eq(self.job),
                self.busy.eq(1),
                blocks_to_emit.eq(self.job.token_blocks),
                row_index.eq(0),
                in_row.eq(0),
                read_pointer.eq(0),
                write_pointer.eq(0),
                blocks_to_fetch.eq(self.job.token_blocks - 1),
                next_valid.eq(dense),
                next_length.eq(self.job.cols),
                next_take.eq(at_most_lanes(self.job.cols)),
                pointer_row.eq(0),
                pointer_blocks.eq(Mux(dense, 0, self.job.token_blocks)),
                previous_end.eq(0),
            ]
            if span:
                m.d.sync += on_last_row.eq(self.job.rows == 1)

        return m
