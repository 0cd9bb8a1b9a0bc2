"""The frame receiver of the host link: request frames from a byte stream, checked whole."""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from .component import ArrayComponent
from .link_formats import LINK_CRC, MAX_PAYLOAD, REQUEST_SYNC, LinkFormats, Status, layout_bytes
from .errors import InputError

__all__ = ["FrameReceiver", "beat_size_of"]


def beat_size_of(m, formats, opcode):
    """A signal, driven in ``m``, with the bytes of one beat of data opcode ``opcode`` (1 for
    any other opcode): how a payload is cut into beats."""
    beat_size = Signal(range(formats.widest_beat + 1))
    with m.Switch(opcode):
        for data_opcode in formats.beats:
            with m.Case(data_opcode):
                m.d.comb += beat_size.eq(formats.beat_bytes(data_opcode))
        with m.Default():
            m.d.comb += beat_size.eq(1)
    return beat_size


class FrameReceiver(ArrayComponent):
    """Receives one request frame at a time into its payload buffer and checks its CRC.

    ::

        rx --> hunt for sync --> header --> payload buffer --> CRC check --> received

    Contract
    --------
    Between frames the receiver drops bytes until :data:`REQUEST_SYNC`. Each frame ends in one
    ``received`` beat (:attr:`LinkFormats.received`) whose ``status`` is ``OK`` when the CRC
    byte matched, ``BAD_LENGTH`` as soon as the header's length is over :data:`MAX_PAYLOAD`,
    ``BAD_CHECKSUM`` when the CRC byte did not match, and ``TIMEOUT`` when the frame stopped for
    ``timeout_cycles`` between two bytes. The beat stays valid, and the payload readable on
    ``payload``, until it is accepted; then the receiver hunts again. ``rx`` is always ready:
    bytes arriving while a beat waits are dropped, never stalled.

    Parameters
    ----------
    config : ArrayConfig
    timeout_cycles : int
        Inter-byte time-out within a frame, at least 16.

    Attributes
    ----------
    rx : In(stream.Signature(8))
    received : Out(stream.Signature(formats.received))
    payload : Out(ReadPort.Signature(addr_width=10, shape=8))
        The payload buffer, read one byte per cycle with one cycle of latency.

    Raises
    ------
    ValueError
        If ``timeout_cycles`` is not an integer of at least 16.
    """

    Formats = LinkFormats

    def __init__(self, config, *, timeout_cycles):
        if not isinstance(timeout_cycles, int) or timeout_cycles < 16:
            raise InputError(f"timeout_cycles must be an integer of at least 16, "
                             f"not {timeout_cycles!r}")
        self._timeout_cycles = timeout_cycles
        super().__init__(config)

    def members(self, formats):
        return {
            "rx": In(stream.Signature(8)),
            "received": Out(stream.Signature(formats.received)),
            "payload": Out(ReadPort.Signature(addr_width=(MAX_PAYLOAD - 1).bit_length(),
                                              shape=8)),
        }

    def elaborate(self, platform):
        m = Module()
        formats = self._formats

        m.submodules.buffer = buffer = Memory(shape=8, depth=MAX_PAYLOAD, init=[])
        write = buffer.write_port()
        wiring.connect(m, wiring.flipped(self.payload), buffer.read_port())
        m.submodules.crc = crc = LINK_CRC.create()

        header_bytes = layout_bytes(formats.request_header)
        header = Signal(formats.request_header)
        header_index = Signal(range(header_bytes))
        status = Signal(Status)
        received = Signal(range(MAX_PAYLOAD + 1))   # payload bytes received
        beat_byte = Signal(range(formats.widest_beat))  # byte within the current beat
        beats = Signal(range(MAX_PAYLOAD + 1))      # whole beats received
        first_bytes = Signal(16)                    # payload bytes 0 and 1 (READ_SUMS count)
        timer = Signal(range(self._timeout_cycles + 1))
        m.d.comb += [self.received.payload.header.eq(header),
                     self.received.payload.status.eq(status),
                     self.received.payload.beats.eq(beats),
                     self.received.payload.partial.eq(beat_byte != 0),
                     self.received.payload.first_bytes.eq(first_bytes)]

        beat_size = beat_size_of(m, formats, header.opcode)

        byte = self.rx.payload
        got = self.rx.valid
        m.d.comb += [self.rx.ready.eq(1), crc.data.eq(byte)]

        def finish(code):
            m.d.sync += status.eq(code)
            m.next = "Deliver"

        def in_frame():
            """Every byte of a frame after the sync goes through the CRC and restarts the
            time-out."""
            with m.If(got):
                m.d.comb += crc.valid.eq(1)
                m.d.sync += timer.eq(0)
            with m.Else():
                m.d.sync += timer.eq(timer + 1)
                with m.If(timer == self._timeout_cycles):
                    finish(Status.TIMEOUT)

        with m.FSM():
            with m.State("Hunt"):
                with m.If(got & (byte == REQUEST_SYNC)):
                    m.d.comb += crc.start.eq(1)     # the CRC covers the bytes after the sync
                    m.d.sync += [header_index.eq(1), timer.eq(0), header.sync.eq(byte),
                                 received.eq(0), beat_byte.eq(0), beats.eq(0)]
                    m.next = "Header"

            with m.State("Header"):
                in_frame()
                with m.If(got):
                    m.d.sync += [header.as_value().word_select(header_index, 8).eq(byte),
                                 header_index.eq(header_index + 1)]
                    with m.If(header_index == header_bytes - 1):
                        length = Cat(header.length[:8], byte)
                        with m.If(length > MAX_PAYLOAD):
                            finish(Status.BAD_LENGTH)
                        with m.Elif(length == 0):
                            m.next = "Check"
                        with m.Else():
                            m.next = "Payload"

            with m.State("Payload"):
                in_frame()
                with m.If(got):
                    m.d.comb += [write.addr.eq(received), write.data.eq(byte), write.en.eq(1)]
                    m.d.sync += received.eq(received + 1)
                    with m.If(received < 2):
                        m.d.sync += first_bytes.word_select(received[0], 8).eq(byte)
                    with m.If(beat_byte == beat_size - 1):
                        m.d.sync += [beat_byte.eq(0), beats.eq(beats + 1)]
                    with m.Else():
                        m.d.sync += beat_byte.eq(beat_byte + 1)
                    with m.If(received == header.length - 1):
                        m.next = "Check"

            with m.State("Check"):
                in_frame()
                with m.If(got):
                    # ``crc.crc`` holds the CRC of the bytes before this one.
                    finish(Status.OK)
                    with m.If(byte != crc.crc):
                        m.d.sync += status.eq(Status.BAD_CHECKSUM)

            with m.State("Deliver"):
                m.d.comb += self.received.valid.eq(1)
                with m.If(self.received.ready):
                    m.next = "Hunt"

        return m
