"""The host link engine: framed commands on a UART byte stream, bridged to the core's streams."""

from amaranth.hdl import Module, Signal, Cat, Mux, ResetInserter, Value
from amaranth.lib import enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import ArrayConfig
from .link_formats import (LinkFormats, Opcode, Status, REQUEST_SYNC, REPLY_SYNC, crc8,
                           MAX_PAYLOAD, IDENTIFICATION_MAGIC, PROTOCOL_VERSION, layout_bytes)

__all__ = ["HostLink", "fifo_depth"]

#: Bytes every input FIFO holds at least: two full frames, so one can be sent while the core
#: drains the other.
FIFO_BYTES = 2 * MAX_PAYLOAD


def fifo_depth(beat_bytes):
    """Beats of the FIFO of a stream with ``beat_bytes`` bytes per beat (a power of two)."""
    depth = 16
    while depth * beat_bytes < FIFO_BYTES:
        depth *= 2
    return depth


def crc8_next(crc, byte):
    """The CRC-8 register after ``byte``: the gateware twin of :func:`link_formats.crc8`.

    The CRC is linear in ``crc ^ byte``, so each output bit is the XOR of the input bits that
    :func:`crc8` maps onto it: a flat XOR per bit rather than eight chained shift steps.
    """
    value = crc ^ byte
    images = [crc8([1 << bit]) for bit in range(8)]
    return Cat(*(Cat(*(value[bit] for bit in range(8) if images[bit] >> out & 1)).xor()
                 for out in range(8)))


class _Reply(enum.Enum, shape=3):
    """What the payload of the reply being sent is."""
    EMPTY = 0
    STATUS = 1
    IDENTIFICATION = 2
    CYCLES = 3
    SUMS = 4


class HostLink(wiring.Component):
    """Executes framed requests from ``rx`` against the core's streams, replying on ``tx``.

    ::

        rx --> frame receiver --> payload buffer --(CRC ok)--> beat assembler --> FIFOs --> core
        tx <-- reply sender <-- status / identification / cycles / sums FIFO <-- core

    Contract
    --------
    Frames follow :class:`~sparsemac.hw.link_formats.LinkFormats`. A request is buffered whole
    and its CRC checked before anything is written, so a corrupted request changes nothing.
    Every request gets exactly one reply, an error reply included; a request that stalls for
    ``timeout_cycles`` between two bytes gets a ``TIMEOUT`` reply and the receiver hunts for the
    next sync byte. Data requests are all-or-nothing: ``NO_ROOM`` when the FIFO lacks space for
    every beat. The engine never waits on the core, so it always replies; the host keeps the
    FIFOs fed and the sums drained (flow control by the ``status`` reply). Bytes arriving while a
    reply is being prepared or sent are dropped.

    Parameters
    ----------
    config : ArrayConfig
    design_hash : int
        64-bit hash of the design, reported by ``IDENTIFY``.
    clock_hz, baud : int
        Reported by ``IDENTIFY`` (the host's board time estimate uses them).
    timeout_cycles : int
        Inter-byte time-out within a request frame.

    Attributes
    ----------
    rx : In(stream.Signature(8))
    tx : Out(stream.Signature(8))
    job, activations, row_pointers, columns, values : Out(stream.Signature(...))
        To the core's inputs of the same names.
    sums, done : In(stream.Signature(...))
        From the core's outputs of the same names.
    core_reset : Out(1)
        One-cycle pulse on ``RESET``: reset the core with it.
    busy : Out(1)
        A job was sent and has not finished.
    error : Out(1)
        One-cycle pulse when an error reply starts.
    """

    def __init__(self, config, *, design_hash, clock_hz, baud, timeout_cycles):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        if not isinstance(design_hash, int) or not 0 <= design_hash < 1 << 64:
            raise ValueError(f"design_hash must be a 64-bit unsigned integer, not {design_hash!r}")
        for name, value in (("clock_hz", clock_hz), ("baud", baud)):
            if not isinstance(value, int) or not 0 < value < 1 << 32:
                raise ValueError(f"{name} must be a positive 32-bit integer, not {value!r}")
        if not isinstance(timeout_cycles, int) or timeout_cycles < 16:
            raise ValueError(f"timeout_cycles must be an integer of at least 16, "
                             f"not {timeout_cycles!r}")
        self._config = config
        self._formats = formats = LinkFormats(config)
        self._identification = formats.identification.const({
            "magic": IDENTIFICATION_MAGIC, "version": PROTOCOL_VERSION,
            "lanes": config.lanes, "token_lanes": config.token_lanes,
            "in_features_log2": config.column_address_width,
            "clock_hz": clock_hz, "baud": baud, "design_hash": design_hash})
        self._timeout_cycles = timeout_cycles
        core = formats.core
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "job": Out(stream.Signature(core.job)),
            "activations": Out(stream.Signature(core.activation_column)),
            "row_pointers": Out(stream.Signature(core.row_pointer)),
            "columns": Out(stream.Signature(core.column_word)),
            "values": Out(stream.Signature(core.value_word)),
            "sums": In(stream.Signature(core.sums)),
            "done": In(stream.Signature(core.cycles)),
            "core_reset": Out(1),
            "busy": Out(1),
            "error": Out(1),
        })

    @property
    def config(self):
        return self._config

    @property
    def formats(self):
        return self._formats

    def elaborate(self, platform):
        m = Module()
        formats = self._formats
        core = formats.core
        clear = Signal()  # RESET: empties the FIFOs and the job register
        m.d.comb += self.core_reset.eq(clear)

        # Input FIFOs, one per core input stream, and the sums FIFO.
        targets = {Opcode.ACTIVATIONS: self.activations, Opcode.ROW_POINTERS: self.row_pointers,
                   Opcode.COLUMNS: self.columns, Opcode.VALUES: self.values}
        fifos = {}
        for opcode, port in targets.items():
            fifo = SyncFIFOBuffered(width=len(Value.cast(port.payload)),
                                    depth=fifo_depth(formats.beat_bytes(opcode)))
            m.submodules[f"{opcode.name.lower()}_fifo"] = ResetInserter(clear)(fifo)
            # A register between the FIFO's block RAM and the core: the RAM's slow
            # clock-to-output would otherwise add to the core's input paths.
            with m.If(~port.valid | port.ready):
                m.d.comb += fifo.r_en.eq(1)
                m.d.sync += [port.valid.eq(fifo.r_rdy), port.payload.eq(fifo.r_data)]
            with m.If(clear):
                m.d.sync += port.valid.eq(0)
            fifos[opcode] = fifo
        sums_fifo = SyncFIFOBuffered(width=len(Value.cast(self.sums.payload)),
                                     depth=fifo_depth(formats.sums_bytes))
        m.submodules.sums_fifo = ResetInserter(clear)(sums_fifo)
        m.d.comb += [sums_fifo.w_data.eq(self.sums.payload), sums_fifo.w_en.eq(self.sums.valid),
                     self.sums.ready.eq(sums_fifo.w_rdy)]
        # The sums beat being sent, in a register: the block RAM's clock-to-output would
        # otherwise start the byte multiplexer and CRC path of the reply sender.
        sums_beat = Signal.like(sums_fifo.r_data)
        sums_beat_valid = Signal()
        sums_sent = Signal()                        # the last byte of ``sums_beat`` went out
        sums_waiting = Signal(range(sums_fifo.depth + 2))
        m.d.comb += sums_waiting.eq(sums_fifo.level + sums_beat_valid)
        with m.If(~sums_beat_valid | sums_sent):
            m.d.comb += sums_fifo.r_en.eq(1)
            m.d.sync += [sums_beat_valid.eq(sums_fifo.r_rdy), sums_beat.eq(sums_fifo.r_data)]
        with m.If(clear):
            m.d.sync += sums_beat_valid.eq(0)

        # The job register and the result of the last job.
        job_pending = Signal()
        running = Signal()
        done = Signal()
        cycles = Signal(core.cycles)
        m.d.comb += [self.job.valid.eq(job_pending), self.done.ready.eq(1),
                     self.busy.eq(job_pending | running)]
        with m.If(self.job.valid & self.job.ready):
            m.d.sync += [job_pending.eq(0), running.eq(1), done.eq(0)]
        with m.If(self.done.valid):
            m.d.sync += [running.eq(0), done.eq(1), cycles.eq(self.done.payload)]

        # Receive side.
        m.submodules.buffer = buffer = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        write = buffer.write_port()
        read = buffer.read_port()

        header = Signal(formats.request_header)
        header_index = Signal(range(layout_bytes(formats.request_header)))
        crc = Signal(8)
        received = Signal(range(MAX_PAYLOAD + 1))   # payload bytes received
        beat_byte = Signal(range(64))               # byte within the current beat
        beats = Signal(range(MAX_PAYLOAD + 1))      # whole beats received
        first_bytes = Signal(16)                    # payload bytes 0 and 1 (READ_SUMS count)
        timer = Signal(range(self._timeout_cycles + 1))

        beat_size = Signal(range(65))
        with m.Switch(header.opcode):
            for opcode in formats.beats:
                with m.Case(opcode):
                    m.d.comb += beat_size.eq(formats.beat_bytes(opcode))
            with m.Default():
                m.d.comb += beat_size.eq(1)

        # Beat assembly from the checked payload.
        assembly_bytes = max(formats.beat_bytes(opcode) for opcode in formats.beats)
        assembly = Signal(8 * assembly_bytes)
        read_address = Signal(range(MAX_PAYLOAD + 1))
        read_valid = Signal()
        push = Signal()

        # Reply side.
        reply_header = Signal(formats.reply_header)
        reply = Signal(_Reply)
        word_bytes = max(layout_bytes(formats.status), layout_bytes(formats.identification),
                         layout_bytes(formats.cycles_reply))
        word = Signal(8 * word_bytes)
        sent = Signal(16)                           # reply bytes sent, header included
        sums_byte = Signal(range(formats.sums_bytes))
        sums_count = Signal(range(sums_fifo.depth + 2))
        status = Signal(Status)

        status_word = Signal(formats.status)
        m.d.comb += [status_word.sums_waiting.eq(sums_waiting),
                     status_word.job_pending.eq(job_pending), status_word.done.eq(done)]
        for opcode, fifo in fifos.items():
            m.d.comb += getattr(status_word, formats.free_field[opcode]).eq(
                fifo.depth - fifo.level)
        cycles_word = Signal(formats.cycles_reply)
        m.d.comb += [cycles_word.cycles.eq(cycles), cycles_word.done.eq(done)]

        header_length = layout_bytes(formats.reply_header)
        reply_bytes = Signal(16)                    # header + payload
        m.d.comb += reply_bytes.eq(header_length + reply_header.length)

        byte = self.rx.payload
        m.d.comb += self.rx.ready.eq(1)             # never stall the receiver: drop, not overrun
        got = self.rx.valid

        def fail(code):
            m.d.sync += status.eq(code)
            m.next = "Reply"

        with m.FSM():
            with m.State("Hunt"):
                with m.If(got & (byte == REQUEST_SYNC)):
                    m.d.sync += [crc.eq(0), header_index.eq(1), timer.eq(0),
                                 header.sync.eq(byte), received.eq(0), beat_byte.eq(0),
                                 beats.eq(0)]
                    m.next = "Header"

            for state in ("Header", "Payload", "Check"):
                with m.State(state):
                    with m.If(got):
                        m.d.sync += [timer.eq(0), crc.eq(crc8_next(crc, byte))]
                    with m.Else():
                        m.d.sync += timer.eq(timer + 1)
                        with m.If(timer == self._timeout_cycles):
                            fail(Status.TIMEOUT)
                    if state == "Header":
                        with m.If(got):
                            m.d.sync += [header.as_value().word_select(header_index, 8).eq(byte),
                                         header_index.eq(header_index + 1)]
                            with m.If(header_index == layout_bytes(formats.request_header) - 1):
                                length = Cat(header.length[:8], byte)
                                with m.If(length > MAX_PAYLOAD):
                                    fail(Status.BAD_LENGTH)
                                with m.Elif(length == 0):
                                    m.next = "Check"
                                with m.Else():
                                    m.next = "Payload"
                    elif state == "Payload":
                        with m.If(got):
                            m.d.comb += [write.addr.eq(received), write.data.eq(byte),
                                         write.en.eq(1)]
                            m.d.sync += received.eq(received + 1)
                            with m.If(received < 2):
                                m.d.sync += first_bytes.word_select(received[0], 8).eq(byte)
                            with m.If(beat_byte == beat_size - 1):
                                m.d.sync += [beat_byte.eq(0), beats.eq(beats + 1)]
                            with m.Else():
                                m.d.sync += beat_byte.eq(beat_byte + 1)
                            with m.If(received == header.length - 1):
                                m.next = "Check"
                    else:
                        with m.If(got):
                            with m.If(byte != crc):
                                fail(Status.BAD_CHECKSUM)
                            with m.Else():
                                m.next = "Execute"

            with m.State("Execute"):
                m.d.sync += [status.eq(Status.OK), reply.eq(_Reply.STATUS), read_address.eq(0),
                             read_valid.eq(0), push.eq(0), beat_byte.eq(0)]
                m.next = "Reply"
                length = header.length
                with m.Switch(header.opcode):
                    for opcode in (Opcode.IDENTIFY, Opcode.STATUS, Opcode.RESET,
                                   Opcode.READ_CYCLES):
                        with m.Case(opcode):
                            with m.If(length != 0):
                                m.d.sync += status.eq(Status.BAD_LENGTH)
                            if opcode == Opcode.IDENTIFY:
                                m.d.sync += reply.eq(_Reply.IDENTIFICATION)
                            elif opcode == Opcode.READ_CYCLES:
                                m.d.sync += reply.eq(_Reply.CYCLES)
                            elif opcode == Opcode.RESET:
                                with m.If(length == 0):
                                    m.d.comb += clear.eq(1)
                                    m.d.sync += [job_pending.eq(0), running.eq(0), done.eq(0)]
                    with m.Case(Opcode.READ_SUMS):
                        m.d.sync += [reply.eq(_Reply.SUMS),
                                     sums_count.eq(Mux(first_bytes < sums_waiting,
                                                       first_bytes, sums_waiting))]
                        with m.If(length != layout_bytes(formats.read_sums)):
                            m.d.sync += status.eq(Status.BAD_LENGTH)
                    with m.Case(Opcode.JOB):
                        with m.If(length != formats.beat_bytes(Opcode.JOB)):
                            m.d.sync += status.eq(Status.BAD_LENGTH)
                        with m.Elif(job_pending | running):
                            m.d.sync += status.eq(Status.NO_ROOM)
                        with m.Else():
                            m.next = "Copy"
                    for opcode, fifo in fifos.items():
                        with m.Case(opcode):
                            with m.If((length == 0) | (beat_byte != 0)):
                                m.d.sync += status.eq(Status.BAD_LENGTH)
                            with m.Elif(beats > fifo.depth - fifo.level):
                                m.d.sync += status.eq(Status.NO_ROOM)
                            with m.Else():
                                m.next = "Copy"
                    with m.Default():
                        m.d.sync += status.eq(Status.BAD_OPCODE)

            with m.State("Copy"):
                # Read the buffer one byte per cycle, assemble beats, push each one the cycle
                # after its last byte lands.
                m.d.comb += read.addr.eq(read_address)
                m.d.sync += read_valid.eq(read_address != header.length)
                with m.If(read_address != header.length):
                    m.d.sync += read_address.eq(read_address + 1)
                m.d.sync += push.eq(0)
                with m.If(read_valid):
                    m.d.sync += assembly.word_select(beat_byte, 8).eq(read.data)
                    with m.If(beat_byte == beat_size - 1):
                        m.d.sync += [beat_byte.eq(0), push.eq(1)]
                    with m.Else():
                        m.d.sync += beat_byte.eq(beat_byte + 1)
                with m.If(push):
                    with m.Switch(header.opcode):
                        with m.Case(Opcode.JOB):
                            m.d.sync += [self.job.payload.eq(assembly), job_pending.eq(1),
                                         done.eq(0)]
                        for opcode, fifo in fifos.items():
                            with m.Case(opcode):
                                m.d.comb += [fifo.w_data.eq(assembly), fifo.w_en.eq(1)]
                with m.If((read_address == header.length) & ~read_valid & ~push):
                    m.next = "Reply"

            with m.State("Reply"):
                # Latch the header and the payload word; the FIFO levels have settled by now.
                m.d.sync += [reply_header.sync.eq(REPLY_SYNC),
                             reply_header.opcode.eq(header.opcode),
                             reply_header.tag.eq(header.tag), reply_header.status.eq(status),
                             sent.eq(0), sums_byte.eq(0)]
                with m.If(status != Status.OK):
                    m.d.comb += self.error.eq(1)
                    m.d.sync += reply_header.length.eq(0)
                with m.Else():
                    with m.Switch(reply):
                        with m.Case(_Reply.STATUS):
                            m.d.sync += [word.eq(status_word),
                                         reply_header.length.eq(layout_bytes(formats.status))]
                        with m.Case(_Reply.IDENTIFICATION):
                            m.d.sync += [word.eq(self._identification.as_bits()),
                                         reply_header.length.eq(
                                             layout_bytes(formats.identification))]
                        with m.Case(_Reply.CYCLES):
                            m.d.sync += [word.eq(cycles_word),
                                         reply_header.length.eq(
                                             layout_bytes(formats.cycles_reply))]
                        with m.Case(_Reply.SUMS):
                            m.d.sync += reply_header.length.eq(sums_count * formats.sums_bytes)
                m.next = "Send"

            with m.State("Send"):
                tx_byte = Signal(8)
                in_header = sent < header_length
                payload_index = (sent - header_length)[:len(sent)]
                with m.If(in_header):
                    m.d.comb += tx_byte.eq(reply_header.as_value().word_select(
                        sent[:3], 8))
                with m.Elif(sent == reply_bytes):
                    m.d.comb += tx_byte.eq(crc)
                with m.Elif(reply == _Reply.SUMS):
                    m.d.comb += tx_byte.eq(sums_beat.word_select(sums_byte, 8))
                with m.Else():
                    m.d.comb += tx_byte.eq(word.word_select(
                        payload_index[:(word_bytes - 1).bit_length()], 8))
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(tx_byte)]
                with m.If(self.tx.ready):
                    m.d.sync += sent.eq(sent + 1)
                    with m.If(sent == 0):
                        m.d.sync += crc.eq(0)
                    with m.Else():
                        m.d.sync += crc.eq(crc8_next(crc, tx_byte))
                    with m.If(~in_header & (sent != reply_bytes) & (reply == _Reply.SUMS)):
                        with m.If(sums_byte == formats.sums_bytes - 1):
                            m.d.sync += sums_byte.eq(0)
                            m.d.comb += sums_sent.eq(1)
                        with m.Else():
                            m.d.sync += sums_byte.eq(sums_byte + 1)
                    with m.If(sent == reply_bytes):
                        m.next = "Hunt"

        return m
