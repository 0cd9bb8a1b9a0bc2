"""Wire format of the host link: the one definition the gateware and the host both use.

Every frame, in both directions, is a little-endian packing of the layouts below: the first field
of a layout is the first byte on the wire. :class:`LinkFormats` gathers them for one array
configuration; the host (``sparsemac.devices.fpga``) packs and parses frames with
``Layout.const(...).as_bits()`` and ``Layout.from_bits(...)`` on these same objects.

A request is ``request_header``, ``length`` payload bytes, then one CRC-8 byte; a reply is
``reply_header``, ``length`` payload bytes, then one CRC-8 byte. The CRC covers every byte after
the sync byte. ``docs/host-link.md`` describes the protocol.
"""

from amaranth.hdl import Shape, unsigned
from amaranth.lib import crc, data, enum

from .config import check_config
from .formats import CoreStreams
from .errors import InputError

__all__ = ["Opcode", "Status", "LinkFormats", "REQUEST_SYNC", "REPLY_SYNC", "LINK_CRC",
           "MAX_PAYLOAD", "FIFO_BYTES", "IDENTIFICATION_MAGIC", "PROTOCOL_VERSION", "fifo_depth",
           "layout_bytes"]

#: First byte of every request: the receiver hunts for it between frames.
REQUEST_SYNC = 0xA5
#: First byte of every reply.
REPLY_SYNC = 0x5A
#: The frame check: CRC-8/SMBUS (polynomial x^8 + x^2 + x + 1, initial value 0, no reflection)
#: over bytes. The gateware builds its CRC units with ``LINK_CRC.create()``, the host computes
#: with ``LINK_CRC.compute(bytes)``: one definition on both sides.
LINK_CRC = crc.catalog.CRC8_SMBUS(data_width=8)
#: The longest payload of a request frame, in bytes (the size of the receive buffer).
MAX_PAYLOAD = 1024
#: Bytes every input FIFO of the board holds at least: two full frames, so one can be sent
#: while the core drains the other.
FIFO_BYTES = 2 * MAX_PAYLOAD
#: ``magic`` of the identification word: "SMAC" in ASCII, first byte first on the wire.
IDENTIFICATION_MAGIC = int.from_bytes(b"SMAC", "little")
#: Bumped whenever a layout or opcode below changes meaning.
PROTOCOL_VERSION = 1


class Opcode(enum.Enum, shape=8):
    """What a request asks for."""
    #: Reply with the identification word.
    IDENTIFY = 0x01
    #: Reply with the link status (free input FIFO space, waiting sums, done flag).
    STATUS = 0x02
    #: Reset the core and empty every FIFO; reply with the status.
    RESET = 0x03
    #: Payload: one ``job`` beat. Starts the core once it is idle; reply with the status.
    JOB = 0x10
    #: Payload: whole ``activation_column`` beats for the activation FIFO; reply with the status.
    ACTIVATIONS = 0x11
    #: Payload: whole ``row_pointer`` beats.
    ROW_POINTERS = 0x12
    #: Payload: whole ``column_word`` beats.
    COLUMNS = 0x13
    #: Payload: whole ``value_word`` beats.
    VALUES = 0x14
    #: Payload: whole ``pairs`` beats (a dual-sparse config only; any other board replies
    #: ``BAD_OPCODE``).
    PAIRS = 0x15
    #: Payload: ``read_sums``. Reply with as many waiting ``sums`` beats as asked for and present.
    READ_SUMS = 0x20
    #: Reply with ``cycles_reply``: the cycle count of the last finished job.
    READ_CYCLES = 0x21


class Status(enum.Enum, shape=8):
    """The outcome a reply reports."""
    OK = 0x00
    #: The CRC byte did not match: nothing was done.
    BAD_CHECKSUM = 0x01
    #: The opcode is not an :class:`Opcode`.
    BAD_OPCODE = 0x02
    #: The length is over :data:`MAX_PAYLOAD`, or is not what the opcode takes (or not a whole
    #: number of beats).
    BAD_LENGTH = 0x03
    #: The FIFO (or the job register) cannot take the whole payload now: nothing was written.
    NO_ROOM = 0x04
    #: The frame stopped before its end for longer than the inter-byte time-out.
    TIMEOUT = 0x05


def fifo_depth(beat_bytes):
    """Beats of the board's FIFO for a stream of ``beat_bytes`` bytes per beat.

    Every input FIFO (and the sums FIFO) holds at least :data:`FIFO_BYTES`; the depth is a power
    of two, at least 16. The host sizes its flow control with the same function.
    """
    depth = 16
    while depth * beat_bytes < FIFO_BYTES:
        depth *= 2
    return depth


def layout_bytes(layout):
    """Bytes a value of ``layout`` takes on the wire (its width rounded up to whole bytes)."""
    return (Shape.cast(layout).width + 7) // 8


class LinkFormats:
    """The frame layouts of the host link for one array configuration.

    Parameters
    ----------
    config : ArrayConfig

    Raises
    ------
    ValueError
        If a beat of ``config`` is wider than :data:`MAX_PAYLOAD` (the ``pairs`` of a large
        dual-sparse array): no frame can carry it.

    Attributes
    ----------
    core : CoreFormats
        The stream payloads that data frames carry.
    request_header : StructLayout
        ``sync`` (:data:`REQUEST_SYNC`), ``opcode`` (an :class:`Opcode` value; a plain byte, so
        that a bad one can be carried and refused), ``tag`` (echoed in the reply, so the host
        can drop stale replies) and ``length`` (payload bytes).
    reply_header : StructLayout
        ``sync`` (:data:`REPLY_SYNC`), ``opcode`` (the request's, as received), ``tag``,
        ``status`` and ``length``.
    identification : StructLayout
        ``magic``, ``version``, ``lanes``, ``token_lanes``, ``in_features_log2``
        (log2 of ``max_in_features``), ``clock_hz``, ``baud``, ``design_hash`` (64 bits).
    status : StructLayout
        Free beats of the ``activations``, ``row_pointers``, ``columns`` and ``values`` FIFOs
        (then of the ``pairs`` FIFO, in a dual-sparse config), ``sums`` beats waiting,
        ``job_pending`` (a job not yet taken by the core) and ``done`` (the last job finished
        and its cycle count is readable).
    read_sums : StructLayout
        ``count``: the most ``sums`` beats to return.
    cycles_reply : StructLayout
        ``cycles`` (the core's counter for the last job) and ``done``.
    streams : CoreStreams
        The core's stream bundle; data opcodes are named after its streams.
    fifo_streams : dict
        FIFO-fed opcode -> the name of the core input stream its beats go to.
    beats : dict
        Data opcode (``JOB`` and the FIFO-fed ones) -> the payload layout of one beat.
    widest_beat : int
        Bytes the beat counters of the link count up to: the widest beat's, at least 64.
    free_field : dict
        FIFO-fed opcode -> the ``status`` field that counts its free beats.
    received : StructLayout
        Internal, frame receiver to link engine: a request's ``header``, the receiver's
        ``status`` (``OK`` or why the frame was refused), the whole ``beats`` of the opcode's
        size in the payload, ``partial`` (a beat is incomplete) and ``first_bytes`` (payload
        bytes 0 and 1: the ``READ_SUMS`` count).
    reply : StructLayout
        Internal, link engine to reply sender: the reply ``header``, the payload ``word``
        (status, identification or cycles, as wide as the widest) and ``sums`` (the payload is
        ``sums`` beats instead).
    """

    def __init__(self, config):
        self.config = check_config(config)
        self.streams = CoreStreams(config)
        self.core = core = self.streams.formats

        self.request_header = data.StructLayout({
            "sync": 8, "opcode": 8, "tag": 8, "length": 16})
        self.reply_header = data.StructLayout({
            "sync": 8, "opcode": 8, "tag": 8, "status": Status, "length": 16})
        self.identification = data.StructLayout({
            "magic": 32, "version": 8, "lanes": 8, "token_lanes": 8, "in_features_log2": 8,
            "clock_hz": 32, "baud": 32, "design_hash": 64})
        self.read_sums = data.StructLayout({"count": 16})
        self.cycles_reply = data.StructLayout({
            "cycles": core.cycles, "done": 1, "reserved": 7})

        #: FIFO-fed opcode -> the core input stream its beats go to (an opcode is named after
        #: its stream).
        self.fifo_streams = {Opcode[name.upper()]: name for name in self.streams.data_inputs}
        #: Data opcode -> the core stream payload its beats carry.
        self.beats = {opcode: self.streams.members[name].signature.members["payload"].shape
                      for opcode, name in {Opcode.JOB: "job", **self.fifo_streams}.items()}
        #: FIFO-fed opcode -> the ``status`` field that counts its free beats.
        self.free_field = {opcode: f"{name}_free" for opcode, name in self.fifo_streams.items()}
        widest = max(self.beat_bytes(opcode) for opcode in self.beats)
        if widest > MAX_PAYLOAD:
            raise InputError(f"a beat of the {config.key()} array takes {widest} bytes, more "
                             f"than a frame's {MAX_PAYLOAD}-byte payload: the host link cannot "
                             "carry it")
        # At least 64, the widest beat without the pairs stream: the beat counters of those
        # designs keep their widths, and so their design hashes.
        self.widest_beat = max(64, widest)
        self.status = data.StructLayout({
            **{field: 16 for field in self.free_field.values()},
            "sums_waiting": 16, "job_pending": 1, "done": 1, "reserved": 6})

        self.received = data.StructLayout({
            "header": self.request_header, "status": Status,
            "beats": range(MAX_PAYLOAD + 1), "partial": 1, "first_bytes": 16})
        word_bytes = max(layout_bytes(self.status), layout_bytes(self.identification),
                         layout_bytes(self.cycles_reply))
        self.reply = data.StructLayout({
            "header": self.reply_header, "word": unsigned(8 * word_bytes), "sums": 1})

    def beat_bytes(self, opcode):
        """Bytes of one beat of data opcode ``opcode``."""
        return layout_bytes(self.beats[Opcode(opcode)])

    @property
    def sums_bytes(self):
        """Bytes of one ``sums`` beat."""
        return layout_bytes(self.core.sums)

    @property
    def sums_capacity(self):
        """``sums`` beats the link takes from the core with none read by the host: the sums
        FIFO's depth. A registered link's ready is a register, set while its FIFO held at most
        depth - 3 beats a cycle before: its FIFO is sure to take depth - 2 beats, and the reply
        sender's register one more."""
        depth = fifo_depth(self.sums_bytes)
        return depth - 1 if self.config.registered else depth

    def reply_length(self, opcode):
        """Payload bytes of the OK reply to ``opcode`` (``READ_SUMS``: per sums beat)."""
        opcode = Opcode(opcode)
        if opcode == Opcode.IDENTIFY:
            return layout_bytes(self.identification)
        if opcode == Opcode.READ_CYCLES:
            return layout_bytes(self.cycles_reply)
        if opcode == Opcode.READ_SUMS:
            return self.sums_bytes
        return layout_bytes(self.status)
