"""The ``fpga`` back end: the board design over a serial port (a ULX3S, or its simulation).

Frames are packed and parsed with the layouts of :mod:`sparsemac.hw.link_formats`; the protocol
is described in ``docs/host-link.md``. Every failure (no port, no reply, a bad checksum, an error
reply, a board that runs another design) raises :class:`~sparsemac.sw.device.DeviceError` with
a message that says what happened; nothing waits longer than the configured time-out.
"""

import time
from dataclasses import dataclass

import numpy as np

from ..bitstreams.build import BOARDS, DEFAULT_BOARD, check_fits
from ..hw import board_link
from ..hw.formats import ColumnIndex, Mode, Sparsity
from ..hw.link_formats import (LinkFormats, Opcode, Status, REQUEST_SYNC, REPLY_SYNC, LINK_CRC,
                               MAX_PAYLOAD, IDENTIFICATION_MAGIC, PROTOCOL_VERSION,
                               layout_bytes)
from ..sw.device import Device, DeviceError, JobResult
from ..sw.packing import pack_job, unpack_sums
from ..hw.errors import InputError

__all__ = ["FPGADevice", "LinkStatusError", "Identification", "encode_request", "decode_reply",
           "DEFAULT_BAUDRATE"]

#: The board design's UART rate.
DEFAULT_BAUDRATE = board_link.DEFAULT_BAUD


class LinkStatusError(DeviceError):
    """The board answered a request with an error status.

    Attributes
    ----------
    status : Status
    opcode : int
    """

    def __init__(self, message, status, opcode):
        super().__init__(message)
        self.status = status
        self.opcode = opcode


_STATUS_MEANING = {
    Status.BAD_CHECKSUM: "the request arrived corrupted (bad checksum); nothing was done",
    Status.BAD_OPCODE: "the board does not know this opcode",
    Status.BAD_LENGTH: "the payload length is wrong for this opcode",
    Status.NO_ROOM: "the board's FIFO (or job register) had no room; nothing was written",
    Status.TIMEOUT: "the request stopped before its end (a byte was lost on the way)",
}


@dataclass(frozen=True)
class Identification:
    """The identification word of a board design."""
    #: K of the design's array.
    lanes: int
    #: T of the design's array.
    token_lanes: int
    #: The activation buffer depth.
    max_in_features: int
    #: The core's clock.
    clock_hz: int
    #: The UART's rate.
    baud: int
    #: The design hash (16 hex digits) the bitstream was built from.
    design_hash: str
    #: The host-link protocol version it speaks.
    version: int

    def describe(self):
        return (f"K={self.lanes} T={self.token_lanes} in<={self.max_in_features}, "
                f"design {self.design_hash}, protocol v{self.version}")


def encode_request(formats, opcode, tag, payload=b""):
    """The bytes of one request frame.

    Parameters
    ----------
    formats : LinkFormats
    opcode : Opcode or int
        A plain integer lets tests send an opcode the board does not know.
    tag : int
        0 to 255, echoed by the reply.
    payload : bytes
    """
    header = formats.request_header.const({
        "sync": REQUEST_SYNC,
        "opcode": opcode.value if isinstance(opcode, Opcode) else opcode,
        "tag": tag,
        "length": len(payload),
    })
    frame = header.as_bits().to_bytes(layout_bytes(formats.request_header), "little")
    frame += bytes(payload)
    return frame + bytes([LINK_CRC.compute(frame[1:])])


def decode_reply(formats, frame):
    """Splits one whole reply frame into (header, payload).

    Raises
    ------
    DeviceError
        If the frame does not start with the reply sync byte, is cut short, or fails its CRC.
    """
    header_bytes = layout_bytes(formats.reply_header)
    if len(frame) < header_bytes + 1 or frame[0] != REPLY_SYNC:
        raise DeviceError(f"not a reply frame: {bytes(frame[:header_bytes]).hex()}")
    header = _unpack(formats.reply_header, frame[:header_bytes])
    if len(frame) != header_bytes + header.length + 1:
        raise DeviceError(f"a reply of {header.length} payload bytes cannot be "
                          f"{len(frame)} bytes long")
    if LINK_CRC.compute(frame[1:-1]) != frame[-1]:
        raise DeviceError("a reply from the board arrived corrupted (bad checksum): "
                          "the request may or may not have been carried out")
    return header, bytes(frame[header_bytes:-1])


def _unpack(layout, payload):
    return layout.from_bits(int.from_bytes(payload, "little"))


class FPGADevice(Device):
    """The sparse MAC core on a board, driven over its UART host link.

    Opening reads the identification word and refuses a board whose design is not the one of
    ``config`` and the current RTL.

    Parameters
    ----------
    config : ArrayConfig or None
        None for the config the board's bitstream is built for
        (:attr:`sparsemac.hw.boards.Board.config`).
    port : str
        Serial port, e.g. ``/dev/ttyUSB0`` (the ULX3S FTDI) or a simulated board's pty.
    baudrate : int
    timeout : float
        Seconds to wait for any one reply (and for the core to make progress).
    resync_s : float
        Pause after a failed exchange, longer than the board's inter-byte time-out, so the
        board is hunting for a frame again before the next request.
    check_design : bool
        Refuse a board whose design hash differs from the current RTL's (the config is always
        checked).
    board : str
        The board (a key of :data:`sparsemac.hw.boards.BOARDS`): a config whose design
        cannot fit its FPGA is refused before the port is opened.

    Raises
    ------
    BoardFitError
        If the design of ``config`` cannot fit ``board``.
    DeviceError
        If the port cannot be opened, the board does not answer, or runs another design.
    """

    name = "fpga"

    def __init__(self, config=None, *, port=None, baudrate=DEFAULT_BAUDRATE,
                 timeout=2.0, resync_s=0.2, check_design=True, board=DEFAULT_BOARD):
        if config is None and board in BOARDS:
            config = BOARDS[board].config
        super().__init__(config)
        check_fits(config, board)
        self._formats = LinkFormats(config)
        self._timeout = float(timeout)
        self._resync_s = float(resync_s)
        self._tag = 0
        self._serial = None
        if port is None:
            raise DeviceError("the fpga back end needs a serial port: pass port='/dev/ttyUSB0' "
                              "(the ULX3S FTDI; see `ls /dev/ttyUSB*`) or a simulated board's pty")
        import serial
        try:
            self._serial = serial.Serial(port, baudrate=baudrate, timeout=min(0.05, timeout),
                                         write_timeout=self._timeout)
        except (serial.SerialException, OSError, ValueError) as error:
            raise DeviceError(f"cannot open serial port {port!r}: {error}. Is the board plugged "
                              "in, and is the port name right (and not open elsewhere)?") from None
        self._port = port
        try:
            self.identification = identification = self.identify()
            problem = self._mismatch(identification, check_design)
        except DeviceError:
            self.close()
            raise
        if problem:
            self.close()
            raise DeviceError(f"the board on {port} runs {identification.describe()}, but "
                              f"{problem}: program it with `sparsemac build --program`")

    def _mismatch(self, identification, check_design):
        config = self.config
        if identification.version != PROTOCOL_VERSION:
            return f"this host speaks protocol v{PROTOCOL_VERSION}"
        built = (identification.lanes, identification.token_lanes, identification.max_in_features)
        wanted = (config.lanes, config.token_lanes, config.max_in_features)
        if built != wanted:
            return f"this host expects {config.describe()}"
        if check_design:
            current = f"{board_link.design_hash(config):016x}"
            if identification.design_hash != current:
                return f"the current RTL is design {current}"
        return None

    def close(self):
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    # Frame exchange -------------------------------------------------------------------------

    def next_tag(self):
        """A fresh tag for a request."""
        self._tag = (self._tag + 1) % 256
        return self._tag

    def exchange(self, frame, tag, expect=None):
        """Sends ``frame`` (raw bytes) and returns the reply with ``tag``: (header, payload).

        Replies with other tags (late answers to earlier, failed requests) are dropped.

        Raises
        ------
        DeviceError
            No reply within the time-out, or a reply with a bad checksum.
        LinkStatusError
            An error reply.
        """
        if self._serial is None:
            raise DeviceError("the fpga device is closed")
        try:
            self._serial.reset_input_buffer()
            self._serial.write(frame)
            self._serial.flush()
            header, payload = self._read_reply(tag)
        except DeviceError:
            self.resync()
            raise
        except OSError as error:
            raise DeviceError(f"serial port {self._port} failed: {error}") from None
        status = header.status
        if status != Status.OK:
            name = (Opcode(header.opcode).name if header.opcode in Opcode._value2member_map_
                    else f"0x{header.opcode:02x}")
            meaning = _STATUS_MEANING.get(status, "unknown error")
            raise LinkStatusError(f"the board refused {name}: {status.name}: {meaning}",
                                  status, header.opcode)
        if expect is not None and len(payload) != expect:
            raise DeviceError(f"the board replied {len(payload)} bytes where {expect} were due")
        return header, payload

    def transact(self, opcode, payload=b"", expect=None):
        """Sends one request and returns the payload of its OK reply (see :meth:`exchange`)."""
        tag = self.next_tag()
        return self.exchange(encode_request(self._formats, opcode, tag, payload), tag,
                             expect)[1]

    def resync(self):
        """Waits out the board's inter-byte time-out and drops whatever it sent meanwhile."""
        if self._serial is not None:
            time.sleep(self._resync_s)
            self._serial.reset_input_buffer()

    def _read_exactly(self, count, deadline):
        data = bytearray()
        while len(data) < count:
            if time.monotonic() > deadline:
                raise DeviceError(
                    f"no complete reply from the board on {self._port} within {self._timeout:g} s"
                    f" (got {len(data)} of {count} bytes): is it programmed with the sparsemac "
                    "design and is the baud rate right?")
            data += self._serial.read(count - len(data))
        return bytes(data)

    def _read_reply(self, tag):
        formats = self._formats
        header_bytes = layout_bytes(formats.reply_header)
        deadline = time.monotonic() + self._timeout
        while True:
            if self._read_exactly(1, deadline)[0] != REPLY_SYNC:
                continue
            frame = bytes([REPLY_SYNC]) + self._read_exactly(header_bytes - 1, deadline)
            length = _unpack(formats.reply_header, frame).length
            header, payload = decode_reply(
                formats, frame + self._read_exactly(length + 1, deadline))
            if header.tag == tag:
                return header, payload

    # Commands --------------------------------------------------------------------------------

    def identify(self):
        """Reads the identification word.

        Raises
        ------
        DeviceError
            If the board does not answer or is not a sparsemac design.
        """
        formats = self._formats
        payload = self.transact(Opcode.IDENTIFY, expect=layout_bytes(formats.identification))
        word = _unpack(formats.identification, payload)
        if word.magic != IDENTIFICATION_MAGIC:
            raise DeviceError(f"the board on {self._port} is not running a sparsemac design "
                              f"(identification magic 0x{word.magic:08x})")
        return Identification(lanes=word.lanes, token_lanes=word.token_lanes,
                              max_in_features=1 << word.in_features_log2,
                              clock_hz=word.clock_hz, baud=word.baud,
                              design_hash=f"{word.design_hash:016x}", version=word.version)

    def status(self, opcode=Opcode.STATUS, payload=b""):
        """Sends ``opcode`` (default ``STATUS``) and returns the status it replies with."""
        formats = self._formats
        return _unpack(formats.status,
                       self.transact(opcode, payload, expect=layout_bytes(formats.status)))

    def read_cycles(self):
        """(cycles, done) of the last job."""
        formats = self._formats
        word = _unpack(formats.cycles_reply, self.transact(
            Opcode.READ_CYCLES, expect=layout_bytes(formats.cycles_reply)))
        return word.cycles, bool(word.done)

    def run_job(self, weights, activations, mode=Mode.SPARSE, index=ColumnIndex.CSR,
                sparsity=Sparsity.WEIGHTS):
        """Runs one job on the board; see :meth:`Device.run_job`.

        The core is reset, then every stream of the job is fed as its FIFO has room (a DUAL
        job, on a dual-sparse board, has its ``pairs`` alone) while the sums are drained. The cycle count is the core's own counter. A job that fits the FIFOs whole is
        loaded before its header is sent, so the count equals the cycle model's; a larger job
        starts at once and its count includes the cycles the core waited for the link.
        """

        formats = self._formats
        if ColumnIndex(index) != ColumnIndex.CSR:
            raise InputError("the board's host link carries full-width column beats: delta jobs "
                             "run on the simulated back ends")
        packed = pack_job(self.config, weights, activations, mode, sparsity=sparsity)
        streams = {opcode: getattr(packed, name) for opcode, name in formats.fifo_streams.items()}
        sent = dict.fromkeys(streams, 0)
        sums_bytes = formats.sums_bytes
        sums_due = packed.token_blocks * packed.rows
        sums = bytearray()

        job = packed.job.to_bytes(formats.beat_bytes(Opcode.JOB), "little")
        status = self.status(Opcode.RESET)
        # A job whose streams fit the FIFOs and whose sums the link can hold is loaded before it
        # starts, so the core runs at full rate and its counter matches the cycle model; a
        # larger one is streamed while the core runs, and its count includes the cycles spent
        # waiting for the link.
        preload = (sums_due <= formats.sums_capacity
                   and all(len(beats) <= getattr(status, formats.free_field[opcode])
                           for opcode, beats in streams.items()))
        if not preload:
            status = self.status(Opcode.JOB, job)
        last_progress = time.monotonic()
        while len(sums) < sums_due * sums_bytes:
            if preload and all(sent[opcode] == len(beats) for opcode, beats in streams.items()):
                status = self.status(Opcode.JOB, job)
                preload = False
            progress = False
            for opcode, beats in streams.items():
                room = getattr(status, formats.free_field[opcode])
                count = min(len(beats) - sent[opcode], room,
                            MAX_PAYLOAD // formats.beat_bytes(opcode))
                if count > 0:
                    chunk = beats[sent[opcode]:sent[opcode] + count]
                    status = self.status(opcode, np.ascontiguousarray(chunk).tobytes())
                    sent[opcode] += count
                    progress = True
            if status.sums_waiting:
                count = min(status.sums_waiting, MAX_PAYLOAD // sums_bytes)
                request = formats.read_sums.const({"count": count}).as_bits()
                sums += self.transact(Opcode.READ_SUMS, request.to_bytes(
                    layout_bytes(formats.read_sums), "little"))
                progress = True
            if progress:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self._timeout:
                raise DeviceError(
                    f"the core made no progress for {self._timeout:g} s with "
                    f"{len(sums) // sums_bytes} of {sums_due} sums read: the job may violate "
                    "the core's contract")
            status = self.status()

        cycles, done = self.read_cycles()
        while not done:
            if time.monotonic() - last_progress > self._timeout:
                raise DeviceError("the core sent every sum but never reported done")
            cycles, done = self.read_cycles()
        beats = np.frombuffer(bytes(sums), dtype=np.uint8).reshape(sums_due, sums_bytes)
        return JobResult(sums=unpack_sums(self.config, beats, packed.rows, packed.tokens),
                         cycles=cycles)
