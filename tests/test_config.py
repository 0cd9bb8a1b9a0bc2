"""ArrayConfig: validation that names the bad value, derived sizes, stable names and keys."""

import dataclasses
import re

import pytest

from sparsemac.hw.config import DEFAULT_CONFIG, ArrayConfig


#: The fields checked against a plain range, with its ends.
RANGES = {"lanes": (1, 32), "token_lanes": (1, 64), "max_out_features": (1, 65535),
          "max_token_blocks": (1, 65535)}


@pytest.mark.parametrize("name, value", [(name, value) for name, (low, high) in RANGES.items()
                                         for value in (low - 1, high + 1)])
def test_a_value_out_of_range_is_refused_with_the_range(name, value):
    low, high = RANGES[name]
    with pytest.raises(ValueError,
                       match=rf"^ArrayConfig\.{name} must be from {low} to {high}, not {value}$"):
        ArrayConfig(**{name: value})


@pytest.mark.parametrize("name, value", [("lanes", 8.0), ("token_lanes", True),
                                         ("max_in_features", "4096"), ("max_out_features", None)])
def test_a_value_that_is_not_an_integer_is_refused(name, value):
    pattern = rf"^ArrayConfig\.{name} must be an integer, not {re.escape(repr(value))}$"
    with pytest.raises(TypeError, match=pattern):
        ArrayConfig(**{name: value})


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_in_features": 100}, ValueError, r"max_in_features must be a power of two.*not 100"),
    ({"max_in_features": 4}, ValueError, r"from 8 to 32768, not 4"),
    ({"max_in_features": 65536}, ValueError, r"not 65536"),
    ({"lanes": 16, "max_in_features": 8}, ValueError, r"power of two from 16 .*not 8"),
    ({"max_in_features": 0}, ValueError, r"max_in_features.*not 0"),
    ({"delta_bits": 2}, ValueError, r"delta_bits must be 0 \(no delta decoder\) or from 3 to 8, "
                                    r"not 2"),
    ({"delta_bits": 9}, ValueError, r"delta_bits.*not 9"),
    ({"read_ports": 3}, ValueError, r"read_ports must be 1 or 2, not 3"),
    ({"read_ports": 2.0}, TypeError, r"read_ports must be an integer, not 2\.0"),
    ({"span_rows": 2}, ValueError, r"span_rows must be 0 or 1, not 2"),
    ({"span_rows": 1, "delta_bits": 5}, ValueError,
     r"span_rows=1 cannot be combined with ArrayConfig\.delta_bits=5"),
    ({"dual_sparse": 2}, ValueError, r"dual_sparse must be 0 or 1, not 2"),
    ({"dual_sparse": True}, TypeError, r"dual_sparse must be an integer, not True"),
    ({"registered": 2}, ValueError, r"registered must be 0 or 1, not 2"),
    ({"registered": "1"}, TypeError, r"registered must be an integer, not '1'"),
], ids=lambda value: str(value) if isinstance(value, dict) else None)
def test_validation_names_the_bad_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        ArrayConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"lanes": 1, "token_lanes": 1, "max_in_features": 8},
    {"lanes": 32, "token_lanes": 64, "max_in_features": 32},
    {"max_in_features": 32768, "max_out_features": 1, "max_token_blocks": 1},
    {"max_out_features": 65535, "max_token_blocks": 65535},
    {"lanes": 3, "max_in_features": 8},
    {"delta_bits": 3}, {"delta_bits": 8},
], ids=str)
def test_range_limits_are_accepted(kwargs):
    config = ArrayConfig(**kwargs)
    assert {name: getattr(config, name) for name in kwargs} == kwargs


def test_default_config_and_derived_sizes():
    assert DEFAULT_CONFIG == ArrayConfig(lanes=8, token_lanes=4, max_in_features=4096,
                                         max_out_features=65535, max_token_blocks=65535)
    assert DEFAULT_CONFIG.multipliers == 32
    assert DEFAULT_CONFIG.column_address_width == 12
    assert DEFAULT_CONFIG.max_tokens == 4 * 65535
    # 8 replicas x 2 banks x 4096 columns x 4 tokens x 8 bits.
    assert DEFAULT_CONFIG.activation_buffer_bits == 2_097_152
    small = ArrayConfig(lanes=3, token_lanes=5, max_in_features=8, max_token_blocks=7)
    assert (small.multipliers, small.column_address_width, small.max_tokens,
            small.activation_buffer_bits) == (15, 3, 35, 3 * 2 * 8 * 5 * 8)


def test_describe_and_key_are_stable():
    assert DEFAULT_CONFIG.describe() == "K=8 T=4 in<=4096"
    assert DEFAULT_CONFIG.key() == "k8t4"
    config = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, max_out_features=10,
                         max_token_blocks=20)
    assert config.describe() == "K=3 T=2 in<=64"
    assert config.key() == "k3t2i64o10b20"
    assert ArrayConfig(**config.as_dict()).key() == config.key()
    assert ArrayConfig(lanes=1, token_lanes=1, max_in_features=512).key() == "k1t1i512"
    assert ArrayConfig(delta_bits=5).key() == "k8t4d5"
    assert ArrayConfig.from_key("k8t4d5") == ArrayConfig(delta_bits=5)
    dual = ArrayConfig(lanes=5, token_lanes=8, max_in_features=1024, read_ports=2)
    assert (dual.key(), dual.describe()) == ("k5t8i1024p2", "K=5 T=8 in<=1024 dual-port buffer")
    # Three replicas (two of two lanes, one of one) x 2 banks x 1024 columns x 8 tokens x 8 bits.
    assert (dual.replicas, dual.activation_buffer_bits) == (3, 3 * 2 * 1024 * 8 * 8)
    assert ArrayConfig.from_key("k5t8i1024p2") == dual
    span = ArrayConfig(lanes=5, token_lanes=3, max_in_features=512, span_rows=1)
    assert (span.key(), span.describe()) == ("k5t3i512s1", "K=5 T=3 in<=512 spanning rows")
    assert ArrayConfig.from_key("k5t3i512s1") == span
    dual_sparse = ArrayConfig(lanes=3, token_lanes=2, max_in_features=64, span_rows=1,
                              dual_sparse=1)
    assert (dual_sparse.key(), dual_sparse.describe()) == (
        "k3t2i64s1a1", "K=3 T=2 in<=64 spanning rows dual-sparse")
    assert ArrayConfig.from_key("k3t2i64s1a1") == dual_sparse
    assert ArrayConfig.from_key("k8t4a1") == ArrayConfig(dual_sparse=1)
    registered = ArrayConfig(lanes=16, token_lanes=8, max_in_features=512, read_ports=2,
                             registered=1)
    assert (registered.key(), registered.describe()) == (
        "k16t8i512p2r1", "K=16 T=8 in<=512 dual-port buffer registered")
    assert ArrayConfig.from_key("k16t8i512p2r1") == registered


def test_from_key_reads_back_every_key():
    for config in (DEFAULT_CONFIG, ArrayConfig(lanes=3, token_lanes=2, max_in_features=64,
                                               max_out_features=10, max_token_blocks=20),
                   ArrayConfig(lanes=16, token_lanes=8, max_token_blocks=7)):
        assert ArrayConfig.from_key(config.key()) == config
    assert ArrayConfig.from_key(" K4T16i512 ") == ArrayConfig(lanes=4, token_lanes=16,
                                                             max_in_features=512)
    for bad in ("k8", "k8t4x", "k8_t4_i4096_o65535_b65535", "default", 84):
        with pytest.raises(ValueError, match="write k<lanes>t<token lanes>"):
            ArrayConfig.from_key(bad)
    with pytest.raises(ValueError, match="max_in_features must be a power of two"):
        ArrayConfig.from_key("k8t4i100")


def test_key_tells_every_field_apart():
    changed = [dataclasses.replace(DEFAULT_CONFIG, **{name: value}) for name, value in
               (("lanes", 4), ("token_lanes", 8), ("max_in_features", 2048),
                ("max_out_features", 100), ("max_token_blocks", 100), ("delta_bits", 5),
                ("read_ports", 2), ("span_rows", 1), ("dual_sparse", 1),
                ("registered", 1))]
    keys = {config.key() for config in changed + [DEFAULT_CONFIG]}
    assert len(keys) == len(changed) + 1, keys


def test_as_dict_round_trips_and_config_is_frozen():
    assert DEFAULT_CONFIG.as_dict() == {"lanes": 8, "token_lanes": 4, "max_in_features": 4096,
                                        "max_out_features": 65535, "max_token_blocks": 65535,
                                        "delta_bits": 0, "read_ports": 1,
                                        "span_rows": 0, "dual_sparse": 0, "registered": 0}
    assert ArrayConfig(**DEFAULT_CONFIG.as_dict()) == DEFAULT_CONFIG
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_CONFIG.lanes = 4
