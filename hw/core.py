"""The sparse MAC core: streamer, activation buffer and MAC array behind one job interface."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import flipped

from .activation_buffer import ActivationBuffer
from .component import ArrayComponent
from .csr_streamer import CSRWeightStreamer
from .delta_decoder import DeltaDecoder
from .formats import CoreStreams, Sparsity
from .mac_array import MACArray
from .operand_select import OperandSelect
from .skid_buffer import SkidBuffer

__all__ = ["SparseMACCore"]


class SparseMACCore(ArrayComponent):
    """Computes ``Y[t][r] = sum over nonzeros (r, c, w) of w * X[t][c]`` for one layer.

    ::

        row_pointers, columns, values --> CSRWeightStreamer --chunks--> [DeltaDecoder] --+
                                                                                         v
        activations -------------------------------------> ActivationBuffer --operands--> ...
        ... --> [OperandSelect <-- pairs] --> MACArray --> sums

    The delta decoder is built only with ``ArrayConfig.delta_bits``, the operand select and the
    ``pairs`` stream only with ``ArrayConfig.dual_sparse``. With ``ArrayConfig.registered`` every
    data input passes a :class:`~sparsemac.hw.skid_buffer.SkidBuffer` at the core's edge, so
    its ``valid``, ``ready`` and payload meet the host link's FIFOs through registers only;
    ``sums`` leave the MAC array's queue, whose ``valid`` and ``ready`` are registers and whose
    payload is read from LUT RAM at a registered address; ``job`` (whose ``ready`` is the state
    register's) and ``done`` (all registers) need none.

    A job is one weight matrix against ``token_blocks`` blocks of T tokens. For each block the
    host streams the block's activations (``cols`` beats, one column of T tokens per beat) and
    the whole weight matrix again; the core returns one ``sums`` beat per row per block, rows in
    order, then reports on ``done`` how many cycles the job took.

    Contract
    --------
    ``job`` is accepted only while idle. The cycle count on ``done`` is the number of cycles
    from the one in which ``job`` was accepted to the one in which the last ``sums`` beat was
    accepted, that one included. With every input valid (from the cycle ``job`` is accepted) and
    every output ready it equals :func:`sparsemac.sw.cycle_model.job_cycles`. The host must keep
    ``rows``, ``cols`` and ``token_blocks`` at least 1, ``cols`` at most ``max_in_features``,
    every column index below ``cols``, and (sparse mode) the last row end pointer equal to
    ``nnz``; (dense mode) ``nnz`` equal to ``rows * cols``.

    A DUAL job (``sparsity`` DUAL, a dual-sparse array) sends no activations and no weights:
    per token block and row, in order, the row's ``pairs`` beats, ``row_last`` on its last one
    (at least one beat a row). The streamer and the activation buffer are not started, and the
    cycle count equals :func:`sparsemac.sw.cycle_model.dual_job_cycles` with ideal streams.

    Attributes
    ----------
    job, done, activations, row_pointers, columns, values, sums : stream interfaces
        The members of :class:`~sparsemac.hw.formats.CoreStreams` (``SparseMACCore.Signature``).
    """

    #: The interface: :class:`~sparsemac.hw.formats.CoreStreams`.
    Signature = CoreStreams

    def members(self, formats):
        return CoreStreams(formats.config)

    def elaborate(self, platform):
        m = Module()

        m.submodules.streamer = streamer = CSRWeightStreamer(self._config)
        m.submodules.activation_buffer = activation_buffer = ActivationBuffer(self._config)
        m.submodules.mac_array = mac_array = MACArray(self._config)

        inputs = self._input_edges(m)
        wiring.connect(m, inputs["row_pointers"], streamer.row_pointers)
        wiring.connect(m, inputs["columns"], streamer.columns)
        wiring.connect(m, inputs["values"], streamer.values)
        wiring.connect(m, inputs["activations"], activation_buffer.fill)
        blocks = [streamer, activation_buffer]
        if self._config.delta_bits:
            m.submodules.delta_decoder = decoder = DeltaDecoder(self._config)
            wiring.connect(m, streamer.chunks, decoder.i_stream)
            wiring.connect(m, decoder.o_stream, activation_buffer.chunks)
            blocks.append(decoder)
        else:
            wiring.connect(m, streamer.chunks, activation_buffer.chunks)
        select = self._connect_operands(m, activation_buffer, mac_array, inputs)
        wiring.connect(m, mac_array.sums, flipped(self.sums))

        start = Signal()
        m.d.comb += start.eq(self.job.valid & self.job.ready)
        if select is not None:
            m.d.comb += [select.start.eq(start), select.job.eq(self.job.payload)]
            # A DUAL job's data come on pairs alone: the weight path is not started.
            start = start & (self.job.payload.sparsity != Sparsity.DUAL)
        for block in blocks:
            m.d.comb += [block.start.eq(start), block.job.eq(self.job.payload)]

        # Count output rows to know when the job is over, and the cycles it took. The last row
        # and block are worked out as the job is taken: a subtraction per sums beat would sit
        # between the sums handshake and done.valid.
        payload = self.job.payload
        last_row = Signal.like(payload.rows)
        last_block = Signal.like(payload.token_blocks)
        row = Signal.like(payload.rows)
        block = Signal.like(payload.token_blocks)
        cycles = Signal.like(self.done.payload)
        last_sum = (row == last_row) & (block == last_block)

        with m.FSM():
            with m.State("Idle"):
                m.d.comb += self.job.ready.eq(1)
                with m.If(self.job.valid):
                    m.d.sync += [last_row.eq(payload.rows - 1),
                                 last_block.eq(payload.token_blocks - 1),
                                 row.eq(0), block.eq(0), cycles.eq(0)]
                    m.next = "Busy"
            with m.State("Busy"):
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(self.sums.valid & self.sums.ready):
                    with m.If(last_sum):
                        m.d.sync += [self.done.valid.eq(1), self.done.payload.eq(cycles + 1)]
                        m.next = "Report"
                    with m.Elif(row == last_row):
                        m.d.sync += [row.eq(0), block.eq(block + 1)]
                    with m.Else():
                        m.d.sync += row.eq(row + 1)
            with m.State("Report"):
                with m.If(self.done.ready):
                    m.d.sync += self.done.valid.eq(0)
                    m.next = "Idle"

        return m

    def _input_edges(self, m):
        """The data input streams as the core's blocks take them, by name: the core's own
        ports, or with ``ArrayConfig.registered`` a :class:`SkidBuffer`'s output each."""
        inputs = {}
        for name in self.signature.data_inputs:
            inputs[name] = flipped(getattr(self, name))
            if self._config.registered:
                shape = self.signature.members[name].signature.members["payload"].shape
                m.submodules[f"{name}_edge"] = edge = SkidBuffer(shape)
                wiring.connect(m, inputs[name], edge.i_stream)
                inputs[name] = edge.o_stream
        return inputs

    def _connect_operands(self, m, activation_buffer, mac_array, inputs):
        """Joins the buffer's operands to the MAC array, through an :class:`OperandSelect` (which
        it returns; None without) that also takes ``pairs`` in a dual-sparse array."""
        if not self._config.dual_sparse:
            wiring.connect(m, activation_buffer.operands, mac_array.operands)
            return None
        m.submodules.operand_select = select = OperandSelect(self._config)
        wiring.connect(m, activation_buffer.operands, select.operands)
        wiring.connect(m, inputs["pairs"], select.pairs)
        wiring.connect(m, select.o_stream, mac_array.operands)
        return select
