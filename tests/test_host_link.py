"""The host link: the engine in Amaranth's simulator, then the whole board through a pty.

The unit tests drive :class:`HostLink`'s byte streams with frames packed by the host's own
encoder and check its replies and the beats it hands the core. The end-to-end tests run the
board RTL under Verilator behind a pseudo-terminal and talk to it with :class:`FPGADevice`.
"""

import dataclasses
import os
import random
import re

import pytest
import torch
from amaranth.sim import Simulator

from sparsemac.bitstreams.build import BOARDS, BoardFitError
from sparsemac.devices import open_device
from sparsemac.devices.fpga import LinkStatusError, decode_reply, encode_request
from sparsemac.hw.config import ArrayConfig
from sparsemac.hw.formats import Mode, Sparsity
from sparsemac.hw.host_link import HostLink
from sparsemac.hw.reply_sender import ReplySender
from sparsemac.hw.link_formats import (IDENTIFICATION_MAGIC, LINK_CRC, MAX_PAYLOAD, LinkFormats,
                                       Opcode, Status, fifo_depth, layout_bytes)
from sparsemac.sim.amaranth_sim import stream_get_all, stream_put_all
from sparsemac.sw.csr import CSRMatrix
from sparsemac.sw.device import DeviceError
from sparsemac.sw.golden import golden_matmul

CONFIG = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64)
FORMATS = LinkFormats(CONFIG)
#: CONFIG with the dual-sparse mode: its link carries the pairs stream too.
DUAL_CONFIG = ArrayConfig.from_key(CONFIG.key() + "a1")
TIMEOUT_CYCLES = 200
DESIGN_HASH = 0x0123456789ABCDEF


# Amaranth unit tests ------------------------------------------------------------------------

def split_replies(data):
    """Whole reply frames in ``data`` (bytes), decoded."""
    replies = []
    while data:
        length = FORMATS.reply_header.from_bits(
            int.from_bytes(data[:layout_bytes(FORMATS.reply_header)], "little")).length
        size = layout_bytes(FORMATS.reply_header) + length + 1
        replies.append(decode_reply(FORMATS, data[:size]))
        data = data[size:]
    return replies


def run_link(requests, *, expect_replies, sums=(), done=None, drain=("activations",),
             seed=0, idle=0.2, backpressure=0.2, gap_cycles=0, config=CONFIG):
    """Sends ``requests`` (lists of bytes, one per frame, each after the previous reply) to a
    HostLink; feeds ``sums`` beats and a ``done`` count on the core side; returns the replies
    and the beats that came out on each drained core input stream."""
    link = HostLink(config, design_hash=DESIGN_HASH, clock_hz=4_000_000, baud=1_000_000,
                    timeout_cycles=TIMEOUT_CYCLES)
    sim = Simulator(link)
    sim.add_clock(1e-8)
    out = bytearray()
    drained = {name: [] for name in drain}
    replies_seen = []

    async def host(ctx):
        rng = random.Random(seed)
        for frame in requests:
            await stream_put_all(ctx, link.rx, list(frame), rng, idle)
            if gap_cycles:
                await ctx.tick().repeat(gap_cycles)
            for _ in range(20 * TIMEOUT_CYCLES):
                if len(split_complete(out)) > len(replies_seen):
                    break
                await ctx.tick()
            replies_seen.append(1)
        await ctx.tick().repeat(100)          # let the last beats reach the core side

    async def device_out(ctx):
        rng = random.Random(seed + 1)
        while True:
            out.extend(await stream_get_all(ctx, link.tx, 1, rng, backpressure))

    async def core_sums(ctx):
        await stream_put_all(ctx, link.core.sums, list(sums), random.Random(seed + 2), idle)
        if done is not None:
            await stream_put_all(ctx, link.core.done, [done], random.Random(seed + 3), 0)

    def drainer(name):
        async def testbench(ctx):
            stream = getattr(link.core, name)
            rng = random.Random(seed + 4)
            while True:
                drained[name].extend(await stream_get_all(ctx, stream, 1, rng, backpressure))
        return testbench

    sim.add_testbench(host)
    sim.add_testbench(device_out, background=True)
    sim.add_testbench(core_sums)
    for name in drain:
        sim.add_testbench(drainer(name), background=True)
    sim.run()
    replies = split_replies(bytes(out))
    assert len(replies) == expect_replies
    return replies, drained


def split_complete(data):
    """Reply frames completely received so far (not decoded)."""
    frames, data = [], bytes(data)
    header = layout_bytes(FORMATS.reply_header)
    while len(data) >= header:
        length = FORMATS.reply_header.from_bits(int.from_bytes(data[:header], "little")).length
        if len(data) < header + length + 1:
            break
        frames.append(data[:header + length + 1])
        data = data[header + length + 1:]
    return frames


def request(opcode, payload=b"", tag=1):
    return encode_request(FORMATS, opcode, tag, payload)


def unpack(layout, payload):
    return layout.from_bits(int.from_bytes(payload, "little"))


def test_identify():
    [(header, payload)] = run_link([request(Opcode.IDENTIFY, tag=7)], expect_replies=1)[0]
    assert (header.status, header.tag, header.opcode) == (Status.OK, 7, Opcode.IDENTIFY.value)
    word = unpack(FORMATS.identification, payload)
    assert word.magic == IDENTIFICATION_MAGIC
    assert (word.lanes, word.token_lanes, 1 << word.in_features_log2) == (4, 2, 64)
    assert (word.clock_hz, word.baud, word.design_hash) == (4_000_000, 1_000_000, DESIGN_HASH)


def corrupt(frame, index):
    frame = bytearray(frame)
    frame[index] ^= 0x10
    return bytes(frame)


@pytest.mark.parametrize("frame, status", [
    (corrupt(request(Opcode.STATUS), 2), Status.BAD_CHECKSUM),
    (corrupt(request(Opcode.ACTIVATIONS, bytes(8)), 7), Status.BAD_CHECKSUM),
    (request(0x7F), Status.BAD_OPCODE),
    (request(Opcode.PAIRS, bytes(17)), Status.BAD_OPCODE),            # not a dual-sparse link
    (request(Opcode.STATUS, b"\x00"), Status.BAD_LENGTH),
    (request(Opcode.ACTIVATIONS, bytes(3)), Status.BAD_LENGTH),       # 1.5 beats of 2 bytes
    (request(Opcode.JOB, bytes(5)), Status.BAD_LENGTH),
    (request(Opcode.READ_SUMS, bytes(1)), Status.BAD_LENGTH),
])
def test_malformed_frame_gets_an_error_reply_and_the_link_recovers(frame, status):
    replies, drained = run_link([frame, request(Opcode.IDENTIFY, tag=2)], expect_replies=2)
    assert replies[0][0].status == status
    assert replies[0][1] == b""
    assert replies[1][0].status == Status.OK and replies[1][0].tag == 2
    assert drained["activations"] == []      # a refused frame writes nothing


def test_oversized_length_is_refused_at_once():
    header = FORMATS.request_header.const({"sync": 0xA5, "opcode": Opcode.VALUES.value,
                                           "tag": 3, "length": MAX_PAYLOAD + 1})
    frame = header.as_bits().to_bytes(layout_bytes(FORMATS.request_header), "little")
    replies, _ = run_link([frame, request(Opcode.IDENTIFY, tag=4)], expect_replies=2)
    assert replies[0][0].status == Status.BAD_LENGTH and replies[0][0].tag == 3
    assert replies[1][0].status == Status.OK


def test_truncated_frame_times_out_and_the_link_recovers():
    truncated = request(Opcode.ACTIVATIONS, bytes(range(8)), tag=5)[:-3]
    replies, drained = run_link([truncated, request(Opcode.IDENTIFY, tag=6)], expect_replies=2)
    assert replies[0][0].status == Status.TIMEOUT and replies[0][0].tag == 5
    assert replies[1][0].status == Status.OK and replies[1][0].tag == 6
    assert drained["activations"] == []


def test_garbage_between_frames_is_skipped():
    replies, _ = run_link([b"\x00\x13\x37" + request(Opcode.STATUS, tag=9)], expect_replies=1)
    assert replies[0][0].status == Status.OK and replies[0][0].tag == 9


#: The link of ``CONFIG`` as it is, and with registered edges (``r1``: a register per FIFO's
#: write enable, a registered RESET and sums ``ready``).
LINK_CONFIGS = pytest.mark.parametrize(
    "config", [CONFIG, dataclasses.replace(CONFIG, registered=1)], ids=["plain", "registered"])


@LINK_CONFIGS
def test_data_frames_become_beats_in_order(config):
    rng = random.Random(3)
    beat_bytes = FORMATS.beat_bytes(Opcode.ACTIVATIONS)
    beats = [rng.randrange(1 << (8 * beat_bytes)) for _ in range(40)]
    payload = b"".join(beat.to_bytes(beat_bytes, "little") for beat in beats)
    frames = [request(Opcode.ACTIVATIONS, payload[:30], tag=1),
              request(Opcode.ACTIVATIONS, payload[30:], tag=2)]
    replies, drained = run_link(frames, expect_replies=2, config=config)
    assert [header.status for header, _ in replies] == [Status.OK, Status.OK]
    assert drained["activations"] == beats


@LINK_CONFIGS
def test_full_fifo_refuses_the_whole_frame(config):
    depth = fifo_depth(FORMATS.beat_bytes(Opcode.VALUES))
    per_frame = MAX_PAYLOAD // FORMATS.beat_bytes(Opcode.VALUES)
    frames = [request(Opcode.VALUES, bytes(MAX_PAYLOAD), tag=tag)
              for tag in range(depth // per_frame + 1)]
    replies, _ = run_link(frames + [request(Opcode.STATUS, tag=99)], drain=(),
                          expect_replies=len(frames) + 1, idle=0, backpressure=0, config=config)
    statuses = [header.status for header, _ in replies]
    assert statuses == [Status.OK] * (depth // per_frame) + [Status.NO_ROOM, Status.OK]
    # One beat has moved on into the register in front of the (stalled) core.
    assert unpack(FORMATS.status, replies[-1][1]).values_free == 1


@LINK_CONFIGS
def test_sums_cycles_and_reset(config):
    """With ``registered`` too, whose RESET clears the FIFOs a cycle later (from a register)
    and whose sums FIFO says ready from a register."""
    rng = random.Random(5)
    sums = [rng.randrange(1 << 64) for _ in range(5)]
    read = FORMATS.read_sums.const({"count": 3}).as_bits().to_bytes(2, "little")
    frames = [request(Opcode.STATUS, tag=1), request(Opcode.READ_SUMS, read, tag=2),
              request(Opcode.READ_SUMS, read, tag=3), request(Opcode.READ_CYCLES, tag=4),
              request(Opcode.RESET, tag=5), request(Opcode.READ_CYCLES, tag=6)]
    replies, _ = run_link(frames, sums=sums, done=12345, expect_replies=6, gap_cycles=50,
                          config=config)
    assert unpack(FORMATS.status, replies[0][1]).sums_waiting == 5
    got = replies[1][1] + replies[2][1]
    assert [int.from_bytes(got[i:i + 8], "little") for i in range(0, len(got), 8)] == sums
    cycles = unpack(FORMATS.cycles_reply, replies[3][1])
    assert (cycles.cycles, cycles.done) == (12345, 1)
    status = unpack(FORMATS.status, replies[4][1])
    assert status.sums_waiting == 0 and status.done == 0
    assert status.activations_free == fifo_depth(FORMATS.beat_bytes(Opcode.ACTIVATIONS))
    assert unpack(FORMATS.cycles_reply, replies[5][1]).done == 0


def test_crc_matches_the_reference_value():
    # CRC-8/SMBUS check value.
    assert LINK_CRC.compute(b"123456789") == 0xF4


def test_gateware_crc_equals_the_host_crc():
    """The reply sender's CRC byte, for replies of random words and lengths, is the host's."""
    rng = random.Random(7)
    word_bits = FORMATS.reply.size - FORMATS.reply_header.size - 1
    lengths = [rng.randrange(word_bits // 8 + 1) for _ in range(20)]
    replies = [FORMATS.reply.const({
        "header": {"sync": 0x5A, "opcode": rng.randrange(256), "tag": rng.randrange(256),
                   "status": Status.OK, "length": length},
        "word": rng.getrandbits(word_bits), "sums": 0}).as_value().value for length in lengths]
    sender = ReplySender(CONFIG)
    sim = Simulator(sender)
    sim.add_clock(1e-8)
    frames = []

    async def source(ctx):
        await stream_put_all(ctx, sender.replies, replies, random.Random(1), 0.2)

    async def sink(ctx):
        rng = random.Random(2)
        for length in lengths:
            size = layout_bytes(FORMATS.reply_header) + length + 1
            frames.append(bytes(await stream_get_all(ctx, sender.tx, size, rng, 0.2)))

    sim.add_testbench(source, background=True)
    sim.add_testbench(sink)
    sim.run()
    for frame, length in zip(frames, lengths):
        assert len(frame) == layout_bytes(FORMATS.reply_header) + length + 1
        assert frame[-1] == LINK_CRC.compute(frame[1:-1])


# End to end: the board RTL under Verilator, behind a pty --------------------------------------

@pytest.fixture(scope="module")
def board():
    from sparsemac.devices.board_sim import SimulatedBoard
    with SimulatedBoard(CONFIG) as simulated:
        yield simulated


@pytest.fixture
def device(board):
    with open_device("fpga", CONFIG, port=board.port, timeout=2.0, resync_s=0.05) as opened:
        yield opened


def pruned_layer(rows, cols, tokens, density, seed):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randint(-128, 128, (rows, cols), generator=generator, dtype=torch.int8)
    weights[torch.rand(rows, cols, generator=generator) >= density] = 0
    weights[min(2, rows - 1)] = 0                                   # an empty row
    activations = torch.randint(-128, 128, (tokens, cols), generator=generator,
                                dtype=torch.int8)
    return CSRMatrix.from_dense(weights), activations


@pytest.mark.parametrize("mode", [Mode.SPARSE, Mode.DENSE])
def test_small_layer_is_bit_exact_with_the_model_cycle_count(device, mode):
    weights, activations = pruned_layer(16, 40, 4, 0.3, seed=1)
    result = device.matmul(weights, activations, mode)
    reference = open_device("reference", CONFIG).matmul(weights, activations, mode)
    assert torch.equal(result.sums, reference.sums)
    # Small enough to be loaded whole before it starts: the core runs at full rate.
    assert result.cycles == reference.cycles


def test_streamed_layer_is_bit_exact_and_cycles_include_link_stalls(device):
    weights, activations = pruned_layer(200, 64, 6, 0.15, seed=2)
    result = device.matmul(weights, activations)
    reference = open_device("reference", CONFIG).matmul(weights, activations)
    assert torch.equal(result.sums, reference.sums)
    # Too big for the FIFOs: the core waits for the UART, and its counter shows it.
    assert result.cycles > reference.cycles


def test_error_replies_over_the_wire_and_recovery(device):
    tag = device.next_tag()
    with pytest.raises(LinkStatusError, match="BAD_OPCODE") as error:
        device.exchange(encode_request(FORMATS, 0x66, tag), tag)
    assert error.value.status == Status.BAD_OPCODE
    assert device.identify().lanes == CONFIG.lanes

    tag = device.next_tag()
    frame = corrupt(encode_request(FORMATS, Opcode.ROW_POINTERS, tag, bytes(16)), 9)
    with pytest.raises(LinkStatusError, match="checksum"):
        device.exchange(frame, tag)
    assert device.identify().lanes == CONFIG.lanes

    tag = device.next_tag()
    frame = encode_request(FORMATS, Opcode.ROW_POINTERS, tag, bytes(16))
    dropped = frame[:8] + frame[9:]
    with pytest.raises(LinkStatusError, match="TIMEOUT"):
        device.exchange(dropped, tag)
    weights, activations = pruned_layer(8, 16, 3, 0.5, seed=3)
    assert torch.equal(device.matmul(weights, activations).sums,
                       open_device("reference", CONFIG).matmul(weights, activations).sums)


def test_a_lost_sync_byte_is_a_host_time_out_and_the_next_command_works(board):
    with open_device("fpga", CONFIG, port=board.port, timeout=0.3, resync_s=0.05) as device:
        tag = device.next_tag()
        with pytest.raises(DeviceError, match="no complete reply"):
            device.exchange(encode_request(FORMATS, Opcode.STATUS, tag)[1:], tag)
        assert device.identify().token_lanes == CONFIG.token_lanes


@pytest.mark.slow
def test_the_board_build_end_to_end_without_naming_its_config():
    # The config of the committed ULX3S bitstream is what a simulated board and the fpga back
    # end take when none is given; one layer through the pty, exact in sums and cycles. Its
    # rows fill the link's sums capacity exactly: the largest job the host loads before starting
    # it, and so the largest whose count has no wait for the UART in it. A row more, and the
    # core waits for the host to read sums: exact sums, a count above the model's.
    from sparsemac.devices.board_sim import SimulatedBoard
    config = BOARDS["ulx3s-85f"].config
    capacity = LinkFormats(config).sums_capacity
    with SimulatedBoard() as simulated, \
            open_device("fpga", port=simulated.port, timeout=5.0, resync_s=0.05) as device:
        assert simulated.config == device.config == config
        for rows in (capacity, capacity + 1):
            weights, activations = pruned_layer(rows, 40, 8, 0.3, seed=4)
            result = device.matmul(weights, activations)
            reference = open_device("reference", config).matmul(weights, activations)
            assert torch.equal(result.sums, reference.sums)
            if rows == capacity:
                assert result.cycles == reference.cycles
            else:
                assert result.cycles > reference.cycles


def test_mismatched_config_is_refused(board):
    other = ArrayConfig(lanes=8, token_lanes=2, max_in_features=64)
    with pytest.raises(DeviceError, match="expects K=8 T=2"):
        open_device("fpga", other, port=board.port)


def test_mismatched_design_hash_is_refused(board, monkeypatch):
    import sparsemac.hw.board_link as board_link
    monkeypatch.setattr(board_link, "design_hash", lambda config: 0xDEADBEEF)
    with pytest.raises(DeviceError, match="current RTL is design 00000000deadbeef"):
        open_device("fpga", CONFIG, port=board.port)


def test_missing_port_is_a_clear_error(tmp_path):
    with pytest.raises(DeviceError, match="cannot open serial port"):
        open_device("fpga", CONFIG, port=str(tmp_path / "ttyUSB9"))
    with pytest.raises(DeviceError, match="needs a serial port"):
        open_device("fpga", CONFIG)


def test_a_config_that_cannot_fit_the_board_is_refused_before_the_port(tmp_path):
    with pytest.raises(BoardFitError, match=re.escape(
            "K=16 T=8 in<=4096 cannot fit the ulx3s-85f (LFE5U-85F): it needs 535 block RAMs")):
        open_device("fpga", ArrayConfig.from_key("k16t8"), port=str(tmp_path / "ttyUSB9"))


def test_the_pairs_stream_has_its_fifo_and_status_field_in_a_dual_sparse_link_only():
    """The pairs FIFO is fed by PAIRS frames and counted last in the status; the layouts of a
    link without the mode are those of before it; a beat no frame can carry is refused."""
    dual = LinkFormats(DUAL_CONFIG)
    assert dual.fifo_streams == {**FORMATS.fifo_streams, Opcode.PAIRS: "pairs"}
    assert list(dual.status.members) == ["activations_free", "row_pointers_free", "columns_free",
                                         "values_free", "pairs_free", "sums_waiting",
                                         "job_pending", "done", "reserved"]
    assert "pairs_free" not in FORMATS.status.members and layout_bytes(FORMATS.status) == 11
    assert (dual.beat_bytes(Opcode.PAIRS), FORMATS.widest_beat, dual.widest_beat) == (17, 64, 64)
    assert LinkFormats(ArrayConfig.from_key("k16t8a1")).widest_beat == 257
    with pytest.raises(ValueError, match="k16t64a1 array takes 2049 bytes, more than a frame's "
                                         "1024-byte payload"):
        LinkFormats(ArrayConfig.from_key("k16t64a1"))


def dual_layer(rows, cols, tokens, seed):
    """A pruned layer whose activations are half zeros, some tokens wholly."""
    weights, activations = pruned_layer(rows, cols, tokens, 0.4, seed)
    generator = torch.Generator().manual_seed(seed)
    activations[torch.rand(activations.shape, generator=generator) < 0.5] = 0
    activations[1] = 0
    return weights, activations


@pytest.mark.slow
def test_a_dual_sparse_job_on_the_board_is_bit_exact_and_cycle_exact():
    """DUAL jobs go through the pairs FIFO: small ones loaded whole run at the model's cycle
    count; a large one streamed while the core runs is still exact in its sums. The same board
    runs weight-only jobs, and a weight-only board refuses DUAL before any job."""
    from sparsemac.devices.board_sim import SimulatedBoard
    reference = open_device("reference", DUAL_CONFIG)
    with SimulatedBoard(DUAL_CONFIG) as simulated, \
            open_device("fpga", DUAL_CONFIG, port=simulated.port, timeout=2.0,
                        resync_s=0.05) as device:
        for sparsity in (Sparsity.DUAL, Sparsity.WEIGHTS):
            weights, activations = dual_layer(16, 40, 5, seed=6)
            result = device.matmul(weights, activations, sparsity=sparsity)
            expected = reference.matmul(weights, activations, sparsity=sparsity)
            assert torch.equal(result.sums, golden_matmul(weights, activations))
            assert result.job_cycles == expected.job_cycles
        weights, activations = dual_layer(120, 64, 6, seed=7)
        result = device.matmul(weights, activations, sparsity=Sparsity.DUAL)
        assert torch.equal(result.sums, golden_matmul(weights, activations))
        assert result.cycles > reference.matmul(weights, activations,
                                                sparsity=Sparsity.DUAL).cycles


@pytest.mark.slow
def test_a_registered_board_is_bit_exact_and_cycle_exact():
    """Skid buffers between the link's FIFOs and the core (``r1``): a layer loaded whole runs
    at the model's count, three cycles a job above the same board without them."""
    from sparsemac.devices.board_sim import SimulatedBoard
    config = ArrayConfig.from_key(CONFIG.key() + "r1")
    weights, activations = pruned_layer(16, 40, 4, 0.3, seed=1)
    with SimulatedBoard(config) as simulated, \
            open_device("fpga", config, port=simulated.port, timeout=2.0,
                        resync_s=0.05) as device:
        for mode in (Mode.SPARSE, Mode.DENSE):
            result = device.matmul(weights, activations, mode)
            expected = open_device("reference", config).matmul(weights, activations, mode)
            plain = open_device("reference", CONFIG).matmul(weights, activations, mode)
            assert torch.equal(result.sums, golden_matmul(weights, activations))
            assert result.job_cycles == expected.job_cycles
            assert expected.cycles == plain.cycles + 3 * len(plain.job_cycles)


def test_a_dual_sparse_job_is_refused_by_a_weight_only_board(device):
    weights, activations = dual_layer(8, 16, 3, seed=8)
    with pytest.raises(ValueError, match="k4t2i64 array has no dual-sparse mode"):
        device.matmul(weights, activations, sparsity=Sparsity.DUAL)


def test_silent_port_times_out():
    master, slave = os.openpty()
    try:
        with pytest.raises(DeviceError, match="no complete reply .* within 0.2 s"):
            open_device("fpga", CONFIG, port=os.ttyname(slave), timeout=0.2, resync_s=0)
    finally:
        os.close(master)
        os.close(slave)
