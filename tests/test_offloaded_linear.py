"""OffloadedLinear: a pruned, quantised nn.Linear on a device."""

import pytest
import torch
from torch import nn

from sparsemac.devices import open_device
from sparsemac.hw.config import ArrayConfig
from sparsemac.sw.golden import quantised_linear
from sparsemac.sw.offloaded_linear import OffloadedLinear
from sparsemac.sw.pruning import prune_mask
from sparsemac.sw.quantisation import quantise_activations, quantise_weights

SMALL = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64)


def make_linear(seed, in_features=48, out_features=20):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_forward_is_the_quantised_golden_path(granularity):
    linear = make_linear(seed=0)
    x = torch.randn(3, 5, 48, generator=torch.Generator().manual_seed(1))
    offloaded = OffloadedLinear.from_linear(linear, open_device("reference", SMALL),
                                            sparsity=0.5, granularity=granularity)
    output = offloaded(x)
    assert output.shape == (3, 5, 20)

    pruned = nn.Linear(48, 20)
    pruned.load_state_dict(linear.state_dict())
    pruned.weight.data *= prune_mask(linear.weight.detach(), 0.5)
    expected = quantised_linear(pruned, x, granularity=granularity)
    torch.testing.assert_close(output, expected.output, rtol=1e-5, atol=1e-5)
    # The int32 sums are the golden model's, bit for bit.
    quantised_x = quantise_activations(x.reshape(-1, 48), granularity).values
    golden = quantised_x.long() @ quantise_weights(pruned.weight.detach()).values.long().T
    assert torch.equal(offloaded.last_sums, golden.int())


def test_amaranth_device_gives_identical_outputs():
    linear = make_linear(seed=2, in_features=12, out_features=6)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(3))
    outputs, cycles = [], []
    for backend in ("reference", "amaranth"):
        offloaded = OffloadedLinear.from_linear(linear, open_device(backend, SMALL),
                                                sparsity=0.7)
        outputs.append(offloaded(x))
        cycles.append(offloaded.stats.cycles)
    assert torch.equal(outputs[0], outputs[1])
    assert cycles[0] == cycles[1]


def test_stats_accumulate_over_calls():
    offloaded = OffloadedLinear.from_linear(make_linear(seed=4), open_device("reference", SMALL),
                                            sparsity=0.9)
    x = torch.randn(7, 48)
    offloaded(x)
    first = offloaded.stats.cycles
    offloaded(x)
    assert offloaded.stats.calls == 2 and offloaded.stats.tokens == 14
    assert offloaded.stats.cycles == 2 * first > 0
    assert offloaded.sparsity == pytest.approx(0.9, abs=0.01)


def test_n_m_pruning_fixes_the_sparsity():
    offloaded = OffloadedLinear.from_linear(make_linear(seed=5), open_device("reference", SMALL),
                                            method="2:4")
    assert offloaded.sparsity >= 0.5
    same = OffloadedLinear.from_linear(make_linear(seed=5), open_device("reference", SMALL),
                                       method="2:4", sparsity=0.5)
    assert same.weights == offloaded.weights


def test_n_m_pruning_refuses_another_sparsity():
    """A sparsity the pattern cannot give is an error, not silently replaced by the pattern's."""
    with pytest.raises(ValueError, match=r"2:4 pruning has sparsity 0.5; pass that or None, "
                                         r"not 0.9"):
        OffloadedLinear.from_linear(make_linear(seed=5), open_device("reference", SMALL),
                                    method="2:4", sparsity=0.9)


def test_wrong_input_width_is_refused():
    offloaded = OffloadedLinear.from_linear(make_linear(seed=6), open_device("reference", SMALL))
    with pytest.raises(ValueError, match=r"\(\.\.\., 48\)"):
        offloaded(torch.randn(2, 47))


def test_layer_wider_than_the_array_is_tiled():
    linear = make_linear(seed=7, in_features=150)
    x = torch.randn(5, 150, generator=torch.Generator().manual_seed(8))
    offloaded = OffloadedLinear.from_linear(linear, open_device("reference", SMALL), sparsity=0.5)
    offloaded(x)
    assert offloaded.stats.jobs == 3  # 150 columns in tiles of 64: 64 + 64 + 22
    golden = quantise_activations(x, offloaded.granularity).values.long() \
        @ offloaded.weights.to_dense().long().T
    assert torch.equal(offloaded.last_sums, golden.int())


def test_dual_sparse_jobs_give_the_same_outputs_in_fewer_cycles():
    """``dual`` runs the jobs in the dual-sparse mode: the same outputs bit for bit, on the
    reference and the Amaranth simulator alike, fewer cycles and bytes for inputs with zeros."""
    config = ArrayConfig(lanes=4, token_lanes=2, max_in_features=64, dual_sparse=1)
    linear = make_linear(seed=6, in_features=40, out_features=6)
    x = torch.relu(torch.randn(5, 40, generator=torch.Generator().manual_seed(7)) - 1.0)
    runs = {}
    for backend, dual in (("reference", False), ("reference", True), ("amaranth", True)):
        offloaded = OffloadedLinear.from_linear(linear, open_device(backend, config),
                                                sparsity=0.5)
        offloaded.dual = dual
        runs[backend, dual] = offloaded(x), offloaded.stats
    (weights_out, weights_stats), (dual_out, dual_stats), (rtl_out, rtl_stats) = runs.values()
    assert torch.equal(dual_out, weights_out) and torch.equal(rtl_out, dual_out)
    assert rtl_stats.cycles == dual_stats.cycles < weights_stats.cycles
    assert rtl_stats.weight_bytes == dual_stats.weight_bytes > 0


def test_dual_sparse_on_an_array_without_the_mode_names_the_config_to_use():
    offloaded = OffloadedLinear.from_linear(make_linear(seed=8), open_device("reference", SMALL),
                                            sparsity=0.5)
    offloaded.dual = True
    with pytest.raises(ValueError, match="no dual-sparse mode.*k4t2i64a1"):
        offloaded(torch.randn(3, 48))
