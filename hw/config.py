"""The one configuration object of the sparse MAC array, shared by hw/, sw/ and sim/."""

import re
from dataclasses import asdict, dataclass, fields

from .errors import InputError

__all__ = ["ArrayConfig", "DEFAULT_CONFIG", "check_config"]


def _is_power_of_two(value):
    return value >= 1 and value & (value - 1) == 0


@dataclass(frozen=True)
class ArrayConfig:
    """Parameters of the sparse MAC array.

    The default (8 nonzero lanes, 4 token lanes, 4096 input features) is 32 int8 multipliers and
    eight 8192 x 32-bit activation buffer replicas: about 128 of the 208 block RAMs and a fifth of
    the multipliers of an ECP5-85F (ULX3S), leaving room for the board's host link. 4096 input
    features cover every BERT-base linear (the widest has 3072 inputs), so no layer is split into
    column tiles along its reduction axis; 8 lanes keep the 90 %-sparse BERT rows (about 77 and 307
    nonzeros) within a few percent of the ideal ceil(n/K) schedule.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of its range.
    """

    #: K, the number of nonzero weights consumed per cycle (1 to 32).
    lanes: int = 8
    #: T, the number of tokens computed in parallel (1 to 64).
    token_lanes: int = 4
    #: Activation buffer depth per token block: the widest input one job takes (a wider layer
    #: runs as column tiles of this width, :func:`sparsemac.sw.cycle_model.job_tiles`).
    #: A power of two from 8 (and at least ``lanes``) to 32768.
    max_in_features: int = 4096
    #: The most output rows one job may have (the width of the row counter).
    max_out_features: int = 65535
    #: The most T-token blocks one job may have.
    max_token_blocks: int = 65535
    #: 0 (the default) for no compressed column index; 3 to 8 to build the delta decoder, which
    #: lets a job send its column indices as deltas of this many bits
    #: (:class:`~sparsemac.hw.formats.DeltaCode`). 5 sends the fewest bytes per nonzero on
    #: 90 %-sparse MiniLM layers (docs/architecture.md).
    delta_bits: int = 0
    #: Read lanes each activation buffer replica serves: 1 (the default: K replicas) or 2 (K/2
    #: replicas, each with its two banks in separate block RAMs read through both ports of the
    #: ECP5's true dual-port DP16KD; it halves the buffer where its depth, not its width, sets
    #: the block RAM count, see docs/architecture.md).
    read_ports: int = 1
    #: 0 (the default): every chunk holds the nonzeros of one row only, so a row of n nonzeros
    #: takes ``max(1, ceil(n / K))`` cycles. 1: a sparse row's last chunk is filled up with the
    #: first nonzeros of the next row of the pass (never its last one), and the MAC array sums
    #: the two rows apart (:func:`sparsemac.sw.cycle_model.span_carries` gives the schedule).
    #: Not with ``delta_bits``: the delta decoder's column scan does not restart inside a
    #: chunk.
    span_rows: int = 0
    #: 0 (the default): a job skips zero weights only. 1: a job may also skip zero
    #: activations, per token (:class:`~sparsemac.hw.formats.Sparsity` ``DUAL``): the host
    #: sends each token's pairs of a nonzero weight and its nonzero activation on a ``pairs``
    #: stream, and the array takes a weight per multiplier instead of one per lane.
    dual_sparse: int = 0
    #: 0 (the default): the core's streams meet the host link's FIFOs combinationally, and each
    #: product is registered once. 1: for timing at the ECP5's limit, every data stream of the
    #: core passes a :class:`~sparsemac.hw.skid_buffer.SkidBuffer` (registered ``ready``,
    #: ``valid`` and payload); the MAC array registers its operands once more, with a copy of
    #: each weight per four token lanes, each multiplier registers its operands and its product
    #: (the input and output registers of an ECP5 MULT18X18D,
    #: :class:`~sparsemac.hw.multiplier.Multiplier`), and each product is registered again in
    #: the logic; the array never stalls but queues its sums
    #: (:class:`~sparsemac.hw.mac_array.MACArray`), and the host link's reset and sums ``ready``
    #: are registers. A job's last sums leave three cycles later
    #: (:func:`sparsemac.sw.cycle_model.pipeline_latency`), and a throttled input reaches the
    #: core one cycle after its memory offers it.
    registered: int = 0

    #: Widths of the wire formats; fixed, not parameters, so the host format never changes
    #: with the array size.
    COLUMN_WIDTH = 16
    ROW_POINTER_WIDTH = 32
    VALUE_WIDTH = 8
    SUM_WIDTH = 32
    CYCLE_COUNTER_WIDTH = 48

    def __post_init__(self):
        for name in ("lanes", "token_lanes", "max_in_features", "max_out_features",
                     "max_token_blocks", "delta_bits", "read_ports", "span_rows", "dual_sparse",
                     "registered"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ArrayConfig.{name} must be an integer, not {value!r}")
        if not 1 <= self.lanes <= 32:
            raise InputError(f"ArrayConfig.lanes must be from 1 to 32, not {self.lanes!r}")
        if not 1 <= self.token_lanes <= 64:
            raise InputError(
                f"ArrayConfig.token_lanes must be from 1 to 64, not {self.token_lanes!r}")
        if (not _is_power_of_two(self.max_in_features)
                or not max(8, self.lanes) <= self.max_in_features <= 1 << (self.COLUMN_WIDTH - 1)):
            raise InputError(
                f"ArrayConfig.max_in_features must be a power of two from {max(8, self.lanes)} "
                f"to {1 << (self.COLUMN_WIDTH - 1)}, not {self.max_in_features!r}")
        if not 1 <= self.max_out_features <= 65535:
            raise InputError(f"ArrayConfig.max_out_features must be from 1 to 65535, "
                             f"not {self.max_out_features!r}")
        if not 1 <= self.max_token_blocks <= 65535:
            raise InputError(f"ArrayConfig.max_token_blocks must be from 1 to 65535, "
                             f"not {self.max_token_blocks!r}")
        if self.delta_bits != 0 and not 3 <= self.delta_bits <= 8:
            raise InputError(f"ArrayConfig.delta_bits must be 0 (no delta decoder) or from 3 to "
                             f"8, not {self.delta_bits!r}")
        if self.read_ports not in (1, 2):
            raise InputError(f"ArrayConfig.read_ports must be 1 or 2, not {self.read_ports!r}")
        if self.span_rows not in (0, 1):
            raise InputError(f"ArrayConfig.span_rows must be 0 or 1, not {self.span_rows!r}")
        if self.dual_sparse not in (0, 1):
            raise InputError(
                f"ArrayConfig.dual_sparse must be 0 or 1, not {self.dual_sparse!r}")
        if self.registered not in (0, 1):
            raise InputError(
                f"ArrayConfig.registered must be 0 or 1, not {self.registered!r}")
        if self.span_rows and self.delta_bits:
            raise InputError(
                f"ArrayConfig.span_rows={self.span_rows!r} cannot be combined with "
                f"ArrayConfig.delta_bits={self.delta_bits!r}: the delta decoder's column scan "
                "does not restart at a row boundary inside a chunk")

    @property
    def multipliers(self):
        """K x T, the int8 multipliers of the array."""
        return self.lanes * self.token_lanes

    @property
    def column_address_width(self):
        """Bits of a column address inside one activation bank."""
        return self.max_in_features.bit_length() - 1

    @property
    def max_tokens(self):
        """The most tokens one job may carry."""
        return self.max_token_blocks * self.token_lanes

    @property
    def replicas(self):
        """Copies of the activation storage: one per ``read_ports`` read lanes."""
        return -(-self.lanes // self.read_ports)

    @property
    def activation_buffer_bits(self):
        """Bits of activation storage: :attr:`replicas` copies of two banks of T int8 columns."""
        return self.replicas * 2 * self.max_in_features * self.token_lanes * self.VALUE_WIDTH

    def describe(self):
        """A short human-readable name, e.g. ``K=8 T=4 in<=4096`` (``... delta 5`` with the
        delta decoder, ``... dual-port buffer`` with two read ports a replica, ``... spanning
        rows`` with chunks that span rows, ``... dual-sparse`` with the dual-sparse mode,
        ``... registered`` with registered stream edges and multipliers)."""
        text = f"K={self.lanes} T={self.token_lanes} in<={self.max_in_features}"
        text += f" delta {self.delta_bits}" if self.delta_bits else ""
        text += " dual-port buffer" if self.read_ports == 2 else ""
        text += " spanning rows" if self.span_rows else ""
        text += " dual-sparse" if self.dual_sparse else ""
        return text + (" registered" if self.registered else "")

    def as_dict(self):
        return asdict(self)

    def key(self):
        """The name of this configuration: ``k<K>t<T>``, then ``i<max_in_features>``,
        ``o<max_out_features>``, ``b<max_token_blocks>``, ``d<delta_bits>``, ``p<read_ports>``,
        ``s<span_rows>``, ``a<dual_sparse>`` and ``r<registered>`` for each of those that is not
        its default, e.g. ``k8t4`` (the default array), ``k1t1i512``, ``k8t4d5``,
        ``k16t8i1024p2``, ``k8t4s1``, ``k8t4a1`` or ``k16t8i512p2r1``. Unique per
        configuration; :meth:`from_key` reads it back, and the command line takes it as
        ``--config``."""
        key = f"k{self.lanes}t{self.token_lanes}"
        for letter, name in _KEY_FIELDS:
            value = getattr(self, name)
            if value != _FIELD_DEFAULTS[name]:
                key += f"{letter}{value}"
        return key

    @classmethod
    def from_key(cls, key):
        """The configuration named ``key`` (the format of :meth:`key`).

        Raises
        ------
        ValueError
            If ``key`` is not in that format, or names a configuration out of range.
        """
        match = _KEY_PATTERN.fullmatch(key.strip().lower()) if isinstance(key, str) else None
        if match is None:
            raise InputError(f"config {key!r}: write k<lanes>t<token lanes>, optionally followed "
                             "by i<max in features>, o<max out features>, b<max token blocks>, "
                             "d<delta bits>, p<read ports>, s<span rows>, a<dual sparse>, "
                             "r<registered>, e.g. k8t4, k1t1i512, k8t4d5, k8t4s1, k8t4a1 or "
                             "k16t8i512p2r1")
        values = {name: int(match[name]) for name in _FIELD_DEFAULTS if match[name] is not None}
        return cls(**values)


#: Letters of the optional fields of a config key, in order.
_KEY_FIELDS = (("i", "max_in_features"), ("o", "max_out_features"), ("b", "max_token_blocks"),
               ("d", "delta_bits"), ("p", "read_ports"), ("s", "span_rows"),
               ("a", "dual_sparse"), ("r", "registered"))
_FIELD_DEFAULTS = {field.name: field.default for field in fields(ArrayConfig)}
_KEY_PATTERN = re.compile(r"k(?P<lanes>\d+)t(?P<token_lanes>\d+)" + "".join(
    rf"(?:{letter}(?P<{name}>\d+))?" for letter, name in _KEY_FIELDS))


DEFAULT_CONFIG = ArrayConfig()


def check_config(config):
    """``config`` itself, after checking that it is an :class:`ArrayConfig`.

    Raises
    ------
    TypeError
        If it is not.
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    return config
