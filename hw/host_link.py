"""The host link engine: framed commands on a UART byte stream, bridged to the core's streams."""

from amaranth.hdl import Module, Signal, Mux, ResetInserter, Value
from amaranth.lib import enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .component import ArrayComponent
from .frame_receiver import FrameReceiver, beat_size_of
from .link_formats import (LinkFormats, Opcode, Status, REPLY_SYNC, IDENTIFICATION_MAGIC,
                           MAX_PAYLOAD, PROTOCOL_VERSION, fifo_depth, layout_bytes)
from .reply_sender import ReplySender
from .errors import InputError

__all__ = ["HostLink"]


class _Reply(enum.Enum, shape=3):
    """What the payload of the reply being sent is."""
    EMPTY = 0
    STATUS = 1
    IDENTIFICATION = 2
    CYCLES = 3
    SUMS = 4


class HostLink(ArrayComponent):
    """Executes framed requests from ``rx`` against the core's streams, replying on ``tx``.

    ::

        rx --> FrameReceiver --received--> engine --beats--> FIFOs --> core
                                              |
        tx <-- ReplySender <--replies---------+   <-- sums FIFO <-- core

    The :class:`~sparsemac.hw.frame_receiver.FrameReceiver` buffers and checks each request,
    the engine here executes it (copying a data payload into beats for the FIFOs) and hands
    the reply to the :class:`~sparsemac.hw.reply_sender.ReplySender`.

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
    core : In(CoreStreams(config))
        The core's stream bundle, flipped: join it to the core with one ``wiring.connect``.
    core_reset : Out(1)
        One-cycle pulse on ``RESET``: reset the core with it.
    busy : Out(1)
        A job was sent and has not finished.
    error : Out(1)
        One-cycle pulse when an error reply starts.
    """

    Formats = LinkFormats

    def __init__(self, config, *, design_hash, clock_hz, baud, timeout_cycles):
        if not isinstance(design_hash, int) or not 0 <= design_hash < 1 << 64:
            raise InputError(f"design_hash must be a 64-bit unsigned integer, not {design_hash!r}")
        for name, value in (("clock_hz", clock_hz), ("baud", baud)):
            if not isinstance(value, int) or not 0 < value < 1 << 32:
                raise InputError(f"{name} must be a positive 32-bit integer, not {value!r}")
        self._receiver = FrameReceiver(config, timeout_cycles=timeout_cycles)
        self._sender = ReplySender(config)
        super().__init__(config)
        self._identification = self._formats.identification.const({
            "magic": IDENTIFICATION_MAGIC, "version": PROTOCOL_VERSION,
            "lanes": config.lanes, "token_lanes": config.token_lanes,
            "in_features_log2": config.column_address_width,
            "clock_hz": clock_hz, "baud": baud, "design_hash": design_hash})

    def members(self, formats):
        return {
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "core": In(formats.streams),
            "core_reset": Out(1),
            "busy": Out(1),
            "error": Out(1),
        }

    def elaborate(self, platform):
        m = Module()
        formats = self._formats
        core = self.core
        m.submodules.receiver = receiver = self._receiver
        m.submodules.sender = sender = self._sender
        wiring.connect(m, wiring.flipped(self.rx), receiver.rx)
        wiring.connect(m, sender.tx, wiring.flipped(self.tx))
        clear = Signal()  # RESET: empties the FIFOs and the job register
        m.d.comb += self.core_reset.eq(clear)
        if self._config.registered:
            # A register, one cycle after the request (state Clear), rather than the decoded
            # request itself: it fans out to every FIFO and the core, across the device.
            m.d.sync += clear.eq(0)

        fifos, sums_fifo, sums_waiting = self._fifos(m, clear, sender)

        job_pending, running, done, cycles = self._job_register(m)

        # The reply words.
        status_word = Signal(formats.status)
        m.d.comb += [status_word.sums_waiting.eq(sums_waiting),
                     status_word.job_pending.eq(job_pending), status_word.done.eq(done)]
        for opcode, fifo in fifos.items():
            m.d.comb += getattr(status_word, formats.free_field[opcode]).eq(
                fifo.depth - fifo.level)
        cycles_word = Signal(formats.cycles_reply)
        m.d.comb += [cycles_word.cycles.eq(cycles), cycles_word.done.eq(done)]

        request = receiver.received.payload
        header = request.header
        status = Signal(Status)
        reply = Signal(_Reply)
        sums_count = Signal(range(sums_fifo.depth + 2))

        # Beat assembly from the checked payload.
        assembly = Signal(8 * max(formats.beat_bytes(opcode) for opcode in formats.beats))
        beat_size = beat_size_of(m, formats, header.opcode)
        beat_byte = Signal(range(formats.widest_beat))  # byte within the current beat
        read_address = Signal(range(MAX_PAYLOAD + 1))
        read_valid = Signal()
        push = Signal()

        with m.FSM():
            with m.State("Wait"):
                with m.If(receiver.received.valid):
                    m.d.sync += [status.eq(request.status), reply.eq(_Reply.STATUS),
                                 read_address.eq(0), read_valid.eq(0), push.eq(0),
                                 beat_byte.eq(0)]
                    m.next = "Reply"
                    with m.If(request.status == Status.OK):
                        self._execute(m, request, status, reply, sums_count, sums_waiting,
                                      fifos, job_pending, running, done, clear)

            if self._config.registered:
                with m.State("Clear"):
                    # The FIFOs are empty from the next cycle, whose reply reports their levels.
                    m.next = "Reply"

            with m.State("Copy"):
                # Read the buffer one byte per cycle, assemble beats, push each one the cycle
                # after its last byte lands.
                length = header.length
                m.d.comb += receiver.payload.addr.eq(read_address)
                m.d.sync += read_valid.eq(read_address != length)
                with m.If(read_address != length):
                    m.d.sync += read_address.eq(read_address + 1)
                m.d.sync += push.eq(0)
                byte_valid, byte = read_valid, receiver.payload.data
                if self._config.registered:
                    # Each byte lands in a register first: the buffer's block RAM is slow to
                    # its output and far from the assembly register's bits.
                    byte_valid, byte = Signal(name="byte_valid"), Signal(8, name="byte")
                    m.d.sync += [byte_valid.eq(read_valid), byte.eq(receiver.payload.data)]
                push_fifos = {}
                if self._config.registered:
                    # A write enable per FIFO, each a register set with push: the opcode's
                    # decoding and the enable's wire to FIFOs across the device are then in
                    # different cycles.
                    for opcode, fifo in fifos.items():
                        push_fifos[opcode] = push_fifo = Signal(
                            name=f"push_{formats.fifo_streams[opcode]}")
                        m.d.sync += push_fifo.eq(0)
                        m.d.comb += [fifo.w_data.eq(assembly), fifo.w_en.eq(push_fifo)]
                with m.If(byte_valid):
                    m.d.sync += assembly.word_select(beat_byte, 8).eq(byte)
                    with m.If(beat_byte == beat_size - 1):
                        m.d.sync += [beat_byte.eq(0), push.eq(1)]
                        m.d.sync += [push_fifo.eq(header.opcode == opcode)
                                     for opcode, push_fifo in push_fifos.items()]
                    with m.Else():
                        m.d.sync += beat_byte.eq(beat_byte + 1)
                with m.If(push):
                    with m.Switch(header.opcode):
                        with m.Case(Opcode.JOB):
                            m.d.sync += [core.job.payload.eq(assembly), job_pending.eq(1),
                                         done.eq(0)]
                        if not self._config.registered:
                            for opcode, fifo in fifos.items():
                                with m.Case(opcode):
                                    m.d.comb += [fifo.w_data.eq(assembly), fifo.w_en.eq(1)]
                reading = read_valid | byte_valid if self._config.registered else read_valid
                with m.If((read_address == length) & ~reading & ~push):
                    m.next = "Reply"

            with m.State("Reply"):
                # Latch the reply for the sender; the FIFO levels have settled by now.
                out = sender.replies.payload
                m.d.sync += [sender.replies.valid.eq(1), out.header.sync.eq(REPLY_SYNC),
                             out.header.opcode.eq(header.opcode), out.header.tag.eq(header.tag),
                             out.header.status.eq(status), out.sums.eq(reply == _Reply.SUMS)]
                with m.If(status != Status.OK):
                    m.d.comb += self.error.eq(1)
                    m.d.sync += out.header.length.eq(0)
                with m.Else():
                    words = {_Reply.STATUS: (status_word, formats.status),
                             _Reply.IDENTIFICATION: (self._identification.as_bits(),
                                                     formats.identification),
                             _Reply.CYCLES: (cycles_word, formats.cycles_reply)}
                    with m.Switch(reply):
                        for kind, (word, layout) in words.items():
                            with m.Case(kind):
                                m.d.sync += [out.word.eq(word),
                                             out.header.length.eq(layout_bytes(layout))]
                        with m.Case(_Reply.SUMS):
                            m.d.sync += out.header.length.eq(sums_count * formats.sums_bytes)
                m.next = "Send"

            with m.State("Send"):
                with m.If(sender.replies.ready):
                    m.d.sync += sender.replies.valid.eq(0)
                    m.d.comb += receiver.received.ready.eq(1)
                    m.next = "Wait"

        return m

    def _job_register(self, m):
        """The job register (``job_pending`` until the core takes it, then ``running``) and
        the result of the last job (``done``, ``cycles``)."""
        core = self.core
        job_pending = Signal()
        running = Signal()
        done = Signal()
        cycles = Signal(self._formats.core.cycles)
        m.d.comb += [core.job.valid.eq(job_pending), core.done.ready.eq(1),
                     self.busy.eq(job_pending | running)]
        with m.If(core.job.valid & core.job.ready):
            m.d.sync += [job_pending.eq(0), running.eq(1), done.eq(0)]
        with m.If(core.done.valid):
            m.d.sync += [running.eq(0), done.eq(1), cycles.eq(core.done.payload)]
        return job_pending, running, done, cycles

    def _fifos(self, m, clear, sender):
        """The input FIFOs, one per core data input stream (by opcode), and the sums FIFO
        feeding the sender, all emptied by ``clear``; also how many sums beats wait."""
        formats = self._formats
        core = self.core
        # Input FIFOs, one per core data input stream, each behind a register: the block RAM's
        # slow clock-to-output would otherwise add to the core's input paths.
        fifos = {}
        for opcode, name in formats.fifo_streams.items():
            port = getattr(core, name)
            fifo = SyncFIFOBuffered(width=len(Value.cast(port.payload)),
                                    depth=fifo_depth(formats.beat_bytes(opcode)))
            m.submodules[f"{name}_fifo"] = ResetInserter(clear)(fifo)
            with m.If(~port.valid | port.ready):
                m.d.comb += fifo.r_en.eq(1)
                m.d.sync += [port.valid.eq(fifo.r_rdy), port.payload.eq(fifo.r_data)]
            with m.If(clear):
                m.d.sync += port.valid.eq(0)
            fifos[opcode] = fifo

        # The sums FIFO, and the beat being sent in a register: the block RAM's clock-to-output
        # would otherwise start the byte multiplexer and CRC path of the reply sender.
        sums_fifo = SyncFIFOBuffered(width=len(Value.cast(core.sums.payload)),
                                     depth=fifo_depth(formats.sums_bytes))
        m.submodules.sums_fifo = ResetInserter(clear)(sums_fifo)
        if self._config.registered:
            # ready from a register, as the core's other edges: it fans out to the enables of
            # a whole sums beat. Set while the FIFO held at most depth - 3 beats a cycle
            # before, so it has room now even for a beat then in flight to its output register:
            # LinkFormats.sums_capacity (depth - 1) less the reply sender's register and the
            # beat in flight.
            room = Signal(init=1)
            m.d.sync += room.eq(sums_fifo.level <= formats.sums_capacity - 2)
            m.d.comb += [sums_fifo.w_data.eq(core.sums.payload),
                         sums_fifo.w_en.eq(core.sums.valid & room), core.sums.ready.eq(room)]
        else:
            m.d.comb += [sums_fifo.w_data.eq(core.sums.payload),
                         sums_fifo.w_en.eq(core.sums.valid), core.sums.ready.eq(sums_fifo.w_rdy)]
        sums_waiting = Signal(range(sums_fifo.depth + 2))
        m.d.comb += sums_waiting.eq(sums_fifo.level + sender.sums.valid)
        with m.If(~sender.sums.valid | sender.sums.ready):
            m.d.comb += sums_fifo.r_en.eq(1)
            m.d.sync += [sender.sums.valid.eq(sums_fifo.r_rdy),
                         sender.sums.payload.eq(sums_fifo.r_data)]
        with m.If(clear):
            m.d.sync += sender.sums.valid.eq(0)
        return fifos, sums_fifo, sums_waiting

    def _execute(self, m, request, status, reply, sums_count, sums_waiting, fifos, job_pending,
                 running, done, clear):
        """Checks a received request against its opcode and starts it: the next state is
        ``Copy`` for a data request that fits, else ``Reply`` with ``status`` set."""
        formats = self._formats
        length = request.header.length
        with m.Switch(request.header.opcode):
            for opcode in (Opcode.IDENTIFY, Opcode.STATUS, Opcode.RESET, Opcode.READ_CYCLES):
                with m.Case(opcode):
                    with m.If(length != 0):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                    if opcode == Opcode.IDENTIFY:
                        m.d.sync += reply.eq(_Reply.IDENTIFICATION)
                    elif opcode == Opcode.READ_CYCLES:
                        m.d.sync += reply.eq(_Reply.CYCLES)
                    elif opcode == Opcode.RESET:
                        with m.If(length == 0):
                            if self._config.registered:
                                m.d.sync += clear.eq(1)
                                m.next = "Clear"
                            else:
                                m.d.comb += clear.eq(1)
                            m.d.sync += [job_pending.eq(0), running.eq(0), done.eq(0)]
            with m.Case(Opcode.READ_SUMS):
                first = request.first_bytes
                m.d.sync += [reply.eq(_Reply.SUMS),
                             sums_count.eq(Mux(first < sums_waiting, first, sums_waiting))]
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
                    with m.If((length == 0) | request.partial):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                    with m.Elif(request.beats > fifo.depth - fifo.level):
                        m.d.sync += status.eq(Status.NO_ROOM)
                    with m.Else():
                        m.next = "Copy"
            with m.Default():
                m.d.sync += status.eq(Status.BAD_OPCODE)
