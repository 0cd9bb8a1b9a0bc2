"""Formal proofs: the fast suite passes, and each proof catches its deliberately broken block."""

import subprocess

import json

import pytest

from sparsemac.sim.formal import broken
from sparsemac.sim.formal.activation_buffer import ActivationBufferHarness
from sparsemac.sim.formal.core import SparseMACCoreHarness
from sparsemac.sim.formal.csr_streamer import CSRStreamerHarness
from sparsemac.sim.formal.host_link import FrameReceiverHarness
from sparsemac.sim.formal.mac_array import MACArrayHarness
from sparsemac.sim.formal.operand_select import OperandSelectHarness
from sparsemac.sim.formal.runner import ProofSpec, run_proofs
from sparsemac.sim.formal.suite import CONFIGS, proofs, select
from sparsemac.app.cli import main

# One worker runs the module: its fixtures run the proofs two at a time themselves.
pytestmark = pytest.mark.xdist_group("formal")


def _broken_case(harness, prop, mode, depth, dut, source, config="k1t1"):
    return ProofSpec(harness, prop, CONFIGS[config], mode, depth, dut=dut), source


#: Each broken variant with the proof that must fail on it, and the file of the assertion
#: that must catch it (the property itself, not some other check).
BROKEN_CASES = [
    _broken_case(CSRStreamerHarness, "conservation", "bmc", 10, broken.PairDroppingStreamer,
                 "csr_streamer.py", config="k2t1"),
    _broken_case(CSRStreamerHarness, "conservation", "bmc", 8, broken.SplitLosingStreamer,
                 "csr_streamer.py", config="k2t1s1"),
    _broken_case(ActivationBufferHarness, "scoreboard", "bmc", 10, broken.DuplicatingBuffer,
                 "activation_buffer.py"),
    # The base case must reach a waiting sums beat: three cycles of pipeline, then a wait.
    _broken_case(MACArrayHarness, "protocol", "prove", 6, broken.FlickeringMACArray, "harness.py"),
    _broken_case(MACArrayHarness, "rows", "bmc", 12, broken.RowLosingMACArray, "mac_array.py"),
    _broken_case(SparseMACCoreHarness, "job", "bmc", 14, broken.SkippingCounterCore, "core.py"),
    _broken_case(SparseMACCoreHarness, "job", "bmc", 14, broken.EagerCore, "core.py"),
    _broken_case(FrameReceiverHarness, "protocol", "prove", 24, broken.ImpatientReceiver,
                 "harness.py"),
    # A pairs beat that contributes twice.
    _broken_case(OperandSelectHarness, "once", "bmc", 10, broken.RepeatingSelect,
                 "operand_select.py", config="k1t1a1"),
]
BROKEN = [spec for spec, _ in BROKEN_CASES]

FAST = proofs()


@pytest.fixture(scope="module")
def fast_results():
    report = run_proofs(FAST, jobs=2)
    return {result.spec: result for result in report.results}


@pytest.fixture(scope="module")
def broken_results():
    report = run_proofs(BROKEN, jobs=2)
    return {result.spec: result for result in report.results}


@pytest.mark.slow
@pytest.mark.parametrize("spec", FAST, ids=[spec.name for spec in FAST])
def test_fast_proof_passes(spec, fast_results):
    result = fast_results[spec]
    assert result.status == "PASS", f"{result.message}\n{result.trace}\n{result.replay}"


@pytest.mark.slow
@pytest.mark.parametrize("spec, source", BROKEN_CASES, ids=[spec.name for spec in BROKEN])
def test_proof_fails_on_broken_block(spec, source, broken_results):
    result = broken_results[spec]
    assert result.status == "FAIL", result.message
    assert result.trace is not None and result.trace.suffix == ".vcd" and result.trace.exists()
    assert "failed assertion top._witness_." in result.message
    assert f"sim/formal/{source}:" in result.message


@pytest.mark.slow
def test_replay_reproduces_the_counterexample(broken_results):
    result = broken_results[BROKEN[2]]
    replay = subprocess.run(result.replay, shell=True, capture_output=True, text=True)
    assert replay.returncode != 0
    assert "DONE (FAIL" in replay.stdout


def test_every_block_and_mode_is_in_ci():
    blocks = {spec.block for spec in FAST}
    assert blocks == {"CSRWeightStreamer", "ActivationBuffer", "MACArray", "SparseMACCore",
                      "FrameReceiver", "ReplySender", "HostLink", "OperandSelect"}
    for block in blocks:
        modes = {spec.mode for spec in FAST if spec.block == block}
        assert "cover" in modes and modes & {"prove", "bmc"}
    assert all(not spec.slow for spec in FAST)
    assert {spec.prop for spec in proofs(everything=True) if spec.slow} >= {"liveness"}


def test_select_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"unknown config 'k9t9'; known: k1t1, k1t1a1, k1t2, "):
        select(configs=["k9t9"])
    with pytest.raises(ValueError, match="no proof matches; add --all"):
        select(props=["liveness"])


def test_cli_bad_config_exits_2(capsys):
    assert main(["formal", "--config", "k9t9"]) == 2
    assert "sparsemac formal: error: unknown config 'k9t9'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_one_proof_and_prints_the_table(capsys):
    assert main(["formal", "--block", "MACArray", "--property", "cover",
                 "--config", "k1t1"]) == 0
    out = capsys.readouterr().out
    assert "MACArray.cover  K=1 T=1 in<=8  cover      8    PASS" in out
    assert "1 of 1 passed" in out


@pytest.mark.slow
def test_cli_json_report_of_one_proof(capsys, tmp_path):
    path = tmp_path / "proofs.csv"
    assert main(["formal", "--block", "MACArray", "--property", "cover", "--config", "k1t1",
                 "--json", "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["passed"] is True
    [result] = report["results"]
    assert (result["block"], result["property"], result["status"]) == ("MACArray", "cover",
                                                                        "PASS")
    assert "MACArray" in path.read_text()
