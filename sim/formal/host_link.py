"""Formal harnesses of the host link: the frame receiver, the reply sender and the engine."""

from amaranth.hdl import Assert, Assume, Cover

from ...hw.frame_receiver import FrameReceiver
from ...hw.host_link import HostLink
from ...hw.link_formats import Status
from ...hw.reply_sender import ReplySender
from .harness import Harness, count, transfer

__all__ = ["FrameReceiverHarness", "ReplySenderHarness", "HostLinkHarness", "TIMEOUT_CYCLES"]

#: The inter-byte time-out of the proofs: the smallest the blocks accept, so a time-out is
#: reachable within the proof depth.
TIMEOUT_CYCLES = 16


class FrameReceiverHarness(Harness):
    """``received`` follows the stream protocol (k-induction) and ``rx`` is never stalled.

    ``cover``: a frame arrives with a good CRC, and one is cut short by the time-out.
    """

    DUT = FrameReceiver
    PROPERTIES = {
        **Harness.PROPERTIES,
        "rx_ready": "rx is always ready: bytes are dropped, never stalled",
        "cover": "a frame with a good CRC; a frame timed out",
    }

    @classmethod
    def make_dut(cls, config):
        return FrameReceiver(config, timeout_cycles=TIMEOUT_CYCLES)

    def check_rx_ready(self, m):
        m.d.comb += Assert(self.rx.ready, "rx not ready")

    def check_cover(self, m):
        status = self.received.payload.status
        m.d.comb += [
            Cover(transfer(self.received) & (status == Status.OK)),
            Cover(self.received.valid & (status == Status.TIMEOUT)),
        ]


class ReplySenderHarness(Harness):
    """``tx`` follows the stream protocol.

    The sender does not wait on ``sums.valid``: its contract makes the engine send sums replies
    of whole beats and hold every beat ready, which is assumed here (a sums reply's length is
    a multiple of the beat size, and ``sums`` is valid while the reply has beats to take).

    ``cover``: a whole sums reply leaves (its ``replies`` beat is taken); ``tx`` waits.
    """

    DUT = ReplySender
    PROPERTIES = {
        **Harness.PROPERTIES,
        "cover": "a sums reply frame sent; tx back-pressured",
    }

    def environment(self, m):
        reply = self.replies.payload
        taken = count(m, "sums_taken", 16, transfer(self.sums), transfer(self.replies))
        beat_bytes = self.dut.formats.sums_bytes
        bytes_left = taken * beat_bytes < reply.header.length
        m.d.comb += [
            Assume(~(self.replies.valid & reply.sums) | (reply.header.length % beat_bytes == 0)),
            Assume(~(self.replies.valid & reply.sums & bytes_left) | self.sums.valid),
        ]

    def check_cover(self, m):
        m.d.comb += [
            Cover(transfer(self.replies) & self.replies.payload.sums),
            Cover(self.tx.valid & ~self.tx.ready),
        ]


class HostLinkHarness(Harness):
    """Every output stream of the engine (``tx`` and the core's five input streams) follows the
    stream protocol, with ``rx`` and the core's ``sums`` and ``done`` assumed to.

    ``cover``: the first byte of a reply leaves on ``tx``.
    """

    DUT = HostLink
    PROPERTIES = {
        **Harness.PROPERTIES,
        "cover": "a request answered: a reply byte on tx",
    }

    @classmethod
    def make_dut(cls, config):
        return HostLink(config, design_hash=0x0123456789ABCDEF, clock_hz=25_000_000,
                        baud=3_000_000, timeout_cycles=TIMEOUT_CYCLES)

    def check_cover(self, m):
        m.d.comb += Cover(transfer(self.tx))
