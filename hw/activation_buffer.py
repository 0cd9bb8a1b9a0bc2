"""The activation buffer: a double-buffered token block, readable at K columns per cycle."""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import memory, stream
from amaranth.lib.wiring import In, Out

from .component import JobComponent

__all__ = ["ActivationBuffer"]


class ActivationBuffer(JobComponent):
    """Holds the activations of two blocks of T tokens and looks up K columns per cycle.

    Each of the K read lanes has its own replica of the storage (one block RAM per lane and
    bank pair), because the K columns of a chunk are arbitrary and a banked layout would stall
    on conflicts. Every fill beat is written to all replicas. The two banks alternate: the
    loader fills one while the array reads the other, so loading the next token block is
    hidden behind computing the current one whenever the block computes for at least ``cols``
    cycles.

    With ``config.read_ports == 2`` one replica serves two lanes: its two banks are separate
    memories, and a bank is only ever written (while it is empty) or read (while it is full),
    never both, so each bank's two ports serve the two lanes while it is read, and the first
    port takes the loader's writes while it is filled. The schedule is the same.

    Contract
    --------
    After ``start`` (one cycle, while ``job`` is valid) the buffer takes ``token_blocks``
    blocks of ``cols`` beats on ``fill``, column 0 first. A bank is filled only when empty and
    read only when full. ``chunks`` is accepted only while the current bank is full; a chunk
    with ``block_last`` set frees that bank after it is read. Each accepted chunk leaves, two
    cycles later, as an ``operands`` beat holding its weights and the T activations of each of
    its K columns (and its ``split``, with ``span_rows``).

    Attributes
    ----------
    start, job
        As in :class:`~sparsemac.hw.component.JobComponent`.
    fill : In(stream.Signature(formats.activation_column))
        The job's token blocks, column by column.
    chunks : In(stream.Signature(formats.chunk))
        The weight chunks of the job, whose columns are looked up.
    operands : Out(stream.Signature(formats.operands))
        Each chunk's weights beside the activations of its columns, for the MAC array.
    """

    def streams(self, formats):
        return {
            "fill": In(stream.Signature(formats.activation_column)),
            "chunks": In(stream.Signature(formats.chunk)),
            "operands": Out(stream.Signature(formats.operands)),
        }

    def elaborate(self, platform):
        m = Module()
        config = self._config
        address_width = config.column_address_width

        cols = Signal.like(self.job.cols)
        full = Array(Signal(name=f"bank{bank}_full") for bank in range(2))

        # Loader: fills the banks in turn.
        blocks_to_load = Signal.like(self.job.token_blocks)
        load_bank = Signal()
        load_column = Signal.like(self.job.cols)
        if not config.registered:
            m.d.comb += self.fill.ready.eq((blocks_to_load != 0) & ~full[load_bank])
        with m.If(self.fill.valid & self.fill.ready):
            with m.If(load_column == cols - 1):
                m.d.sync += [
                    load_column.eq(0),
                    full[load_bank].eq(1),
                    load_bank.eq(~load_bank),
                    blocks_to_load.eq(blocks_to_load - 1),
                ]
            with m.Else():
                m.d.sync += load_column.eq(load_column + 1)

        # Reader: one lookup per lane, two stages: the read ports' own registers, then a register
        # of the data, so the block RAMs spread over the device do not drive the multipliers
        # directly. Both move together while the output can take a beat.
        read_bank = Signal()
        advance = ~self.operands.valid | self.operands.ready
        m.d.comb += self.chunks.ready.eq(advance & full[read_bank])
        accept = self.chunks.valid & self.chunks.ready
        read_valid = Signal()
        # A registered array's (``ArrayConfig.registered``) data registers have no reset: the
        # valid bits say what they hold, and a reset reaching every one is a long wire.
        data_reset_less = bool(config.registered)
        read_weights = Signal.like(self.chunks.payload.values, reset_less=data_reset_less)
        read_last = Signal()
        if config.registered:
            payload = Signal.like(self.operands.payload, reset_less=True)
            m.d.comb += self.operands.payload.eq(payload)
        else:
            payload = self.operands.payload
        store = self._shared_banks if config.read_ports == 2 else self._replicas
        lane_data = store(m, load_column[:address_width], load_bank, read_bank, full, advance)
        for lane, data in enumerate(lane_data):
            with m.If(advance):
                m.d.sync += payload.activations[lane].eq(data)

        with m.If(advance):
            m.d.sync += [
                read_valid.eq(accept),
                read_weights.eq(self.chunks.payload.values),
                read_last.eq(self.chunks.payload.row_last),
                self.operands.valid.eq(read_valid),
                payload.weights.eq(read_weights),
                payload.row_last.eq(read_last),
            ]
        if config.span_rows:
            read_split = Signal.like(self.chunks.payload.split)
            with m.If(advance):
                m.d.sync += [
                    read_split.eq(self.chunks.payload.split),
                    payload.split.eq(read_split),
                ]
        block_read = accept & self.chunks.payload.block_last
        with m.If(block_read):
            m.d.sync += [
                full[read_bank].eq(0),
                read_bank.eq(~read_bank),
            ]

        with m.If(self.start):
            m.d.sync += [
                cols.eq(self.job.cols),
                blocks_to_load.eq(self.job.token_blocks),
                load_column.eq(0),
                load_bank.eq(0),
                read_bank.eq(0),
            ]

        if config.registered:
            self._register_fill_ready(m, cols, load_column, blocks_to_load, load_bank, full,
                                      read_bank, block_read)
        return m

    def _register_fill_ready(self, m, cols, load_column, blocks_to_load, load_bank, full,
                             read_bank, block_read):
        """A registered array's ``fill.ready`` as a register: it enables the wide input skid
        buffer's every payload bit, so it should not wait on gates. It is worked out from the
        next values of the state it reads, so it equals the plain expression
        ``(blocks_to_load != 0) & ~full[load_bank]`` cycle for cycle; every compare in it is
        of registers, so only multiplexers lie between the handshakes and the register."""
        # Whether the column being loaded is the block's last (load_column == cols - 1).
        at_last_column = Signal()
        accepted = self.fill.valid & self.fill.ready
        with m.If(self.start):
            m.d.sync += at_last_column.eq(self.job.cols == 1)
        with m.Elif(accepted):
            m.d.sync += at_last_column.eq(Mux(at_last_column, cols == 1, load_column + 2 == cols))
        block_loaded = accepted & at_last_column
        blocks_left = Mux(self.start, self.job.token_blocks != 0,
                          Mux(block_loaded, blocks_to_load != 1, blocks_to_load != 0))
        next_load_bank = Mux(self.start, 0, load_bank ^ block_loaded)
        next_full = [(full[bank] | (block_loaded & (load_bank == bank)))
                     & ~(block_read & (read_bank == bank)) for bank in range(2)]
        m.d.sync += self.fill.ready.eq(
            blocks_left & ~Mux(next_load_bank, next_full[1], next_full[0]))

    def _replicas(self, m, load_address, load_bank, read_bank, full, advance):
        """One memory per lane holding both banks, the bank the top address bit: each lane's
        read data, one cycle after its address (while ``advance``)."""
        lane_data = []
        for lane in range(self._config.lanes):
            replica = memory.Memory(shape=self._formats.activation_column,
                                    depth=2 * self._config.max_in_features, init=[])
            m.submodules[f"replica{lane}"] = replica
            write_port = replica.write_port()
            read_port = replica.read_port()
            m.d.comb += [
                write_port.addr.eq(Cat(load_address, load_bank)),
                write_port.data.eq(self.fill.payload),
                write_port.en.eq(self.fill.valid & self.fill.ready),
                read_port.addr.eq(Cat(self.chunks.payload.columns[lane], read_bank)),
                read_port.en.eq(advance),
            ]
            lane_data.append(read_port.data)
        return lane_data

    def _shared_banks(self, m, load_address, load_bank, read_bank, full, advance):
        """One memory per bank and pair of lanes, both ports reading while the bank is full, the
        first port writing while it is empty: each lane's read data, as :meth:`_replicas`."""
        config = self._config
        # The bank the data now leaving the memories was read from.
        data_bank = Signal()
        with m.If(advance):
            m.d.sync += data_bank.eq(read_bank)
        lane_data = []
        for replica in range(config.replicas):
            lanes = range(2 * replica, min(2 * replica + 2, config.lanes))
            bank_data = []
            for bank in range(2):
                storage = memory.Memory(shape=self._formats.activation_column,
                                        depth=config.max_in_features, init=[])
                m.submodules[f"replica{replica}_bank{bank}"] = storage
                write_port = storage.write_port()
                # The first port's address is the loader's while the bank is empty: one
                # address for its write and its read makes it one physical port.
                first_address = Signal.like(load_address, name=f"replica{replica}_bank{bank}_a")
                m.d.comb += [
                    first_address.eq(Mux(full[bank], self.chunks.payload.columns[lanes[0]],
                                         load_address)),
                    write_port.addr.eq(first_address),
                    write_port.data.eq(self.fill.payload),
                    write_port.en.eq(self.fill.valid & self.fill.ready & (load_bank == bank)),
                ]
                ports = []
                for index, lane in enumerate(lanes):
                    # A bank is never read while written, so what the second port reads during
                    # a write is free: transparent, which Yosys can give it in logic, rather
                    # than read-first, which the DP16KD cannot give across its ports (Yosys
                    # would then not share the first port with the write and would duplicate
                    # the memory).
                    read_port = storage.read_port(
                        transparent_for=(write_port,) if index == 1 else ())
                    m.d.comb += [
                        read_port.addr.eq(first_address if index == 0
                                          else self.chunks.payload.columns[lane]),
                        read_port.en.eq(advance),
                    ]
                    ports.append(read_port.data)
                bank_data.append(ports)
            lane_data.extend(Mux(data_bank, bank_data[1][index], bank_data[0][index])
                             for index in range(len(lanes)))
        return lane_data
