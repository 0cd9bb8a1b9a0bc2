"""The reply sender of the host link: a reply frame out on a byte stream, CRC appended."""

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream
from amaranth.lib.wiring import In, Out

from .component import ArrayComponent
from .link_formats import LINK_CRC, LinkFormats, layout_bytes

__all__ = ["ReplySender", "SETTLE_CYCLES"]

#: Cycles ``tx`` waits when a reply arrives and after each byte it takes: the byte is picked in
#: two registered stages (the sums beat's 64-bit word, then the byte), so neither the byte
#: multiplexer of a wide sums beat nor the CRC and UART behind it share a path; and a beat's
#: ``ready`` is a register, so the next beat reaches the link's register a cycle later.
SETTLE_CYCLES = 3


class ReplySender(ArrayComponent):
    """Sends each ``replies`` beat as one frame on ``tx``: header, payload, CRC byte.

    ::

        replies (header, word) --+
                                 +--> byte multiplexer --> CRC --> tx
        sums beats --------------+

    Contract
    --------
    A ``replies`` beat (:attr:`LinkFormats.reply`) is accepted in the cycle its frame's last
    byte (the CRC) is accepted on ``tx``. ``tx`` waits :data:`SETTLE_CYCLES` cycles when a reply
    arrives and after each byte it takes (a UART takes ten bit times a byte, so a board's link
    loses nothing to it). The payload is the first ``header.length`` bytes of
    ``word``, or, with ``sums`` set, ``header.length`` bytes taken from whole ``sums`` beats:
    each beat is accepted the cycle after its last byte is (its ``ready`` is a register: it
    enables every bit of the link's sums register). The engine must have the beats ready: the
    sender does not wait on ``sums.valid``. The CRC covers every byte after the sync byte.

    Parameters
    ----------
    config : ArrayConfig

    Attributes
    ----------
    replies : In(stream.Signature(formats.reply))
    sums : In(stream.Signature(formats.core.sums))
    tx : Out(stream.Signature(8))
    """

    Formats = LinkFormats

    def members(self, formats):
        return {
            "replies": In(stream.Signature(formats.reply)),
            "sums": In(stream.Signature(formats.core.sums)),
            "tx": Out(stream.Signature(8)),
        }

    def elaborate(self, platform):
        m = Module()
        formats = self._formats
        reply = self.replies.payload
        m.submodules.crc = crc = LINK_CRC.create()

        header_bytes = layout_bytes(formats.reply_header)
        word_bytes = len(reply.word) // 8
        reply_bytes = Signal(16)                    # header + payload
        m.d.comb += reply_bytes.eq(header_bytes + reply.header.length)
        sent = Signal(16)                           # bytes sent, header included
        sums_byte = Signal(range(formats.sums_bytes))
        # The CRC byte is next: a register set a byte ahead, as the length's sum and compare
        # would otherwise sit before the sums handshake and the sums FIFO's read enable.
        last = Signal()

        # The byte is worked out from the state of the cycle before, over two stages; tx waits
        # until both stages hold the current state (and the next sums beat has arrived).
        sums_word = Signal(64)
        word_byte = Signal(3)
        beat = self.sums.payload.as_value()
        beat = Cat(beat, Const(0, -len(beat) % len(sums_word)))     # whole words
        m.d.sync += [sums_word.eq(beat.word_select(sums_byte >> 3, len(sums_word))),
                     word_byte.eq(sums_byte[:3])]
        tx_byte = Signal(8)
        in_header = sent < header_bytes
        payload_index = (sent - header_bytes)[:len(sent)]
        with m.If(in_header):
            m.d.sync += tx_byte.eq(reply.header.as_value().word_select(
                sent[:(header_bytes - 1).bit_length()], 8))
        with m.Elif(last):
            m.d.sync += tx_byte.eq(crc.crc)
        with m.Elif(reply.sums):
            m.d.sync += tx_byte.eq(sums_word.word_select(word_byte, 8))
        with m.Else():
            m.d.sync += tx_byte.eq(reply.word.word_select(
                payload_index[:(word_bytes - 1).bit_length()], 8))
        settling = Signal(range(SETTLE_CYCLES + 1), init=SETTLE_CYCLES)
        with m.If(~self.replies.valid | (self.tx.valid & self.tx.ready)):
            m.d.sync += settling.eq(SETTLE_CYCLES)
        with m.Elif(settling != 0):
            m.d.sync += settling.eq(settling - 1)
        m.d.comb += [self.tx.valid.eq(self.replies.valid & (settling == 0)),
                     self.tx.payload.eq(tx_byte), crc.data.eq(tx_byte)]

        beat_sent = Signal()                        # a sums beat's last byte went last cycle
        m.d.comb += self.sums.ready.eq(beat_sent)
        m.d.sync += beat_sent.eq(0)
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += [sent.eq(sent + 1), last.eq(sent + 1 == reply_bytes)]
            with m.If(sent == 0):
                m.d.comb += crc.start.eq(1)         # the sync byte is not covered
            with m.Else():
                m.d.comb += crc.valid.eq(1)
            with m.If(~in_header & ~last & reply.sums):
                with m.If(sums_byte == formats.sums_bytes - 1):
                    m.d.sync += [sums_byte.eq(0), beat_sent.eq(1)]
                with m.Else():
                    m.d.sync += sums_byte.eq(sums_byte + 1)
            with m.If(last):
                m.d.sync += [sent.eq(0), last.eq(0)]
                m.d.comb += self.replies.ready.eq(1)

        return m
