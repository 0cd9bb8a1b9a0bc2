"""The proofs of the gateware: which property, for which configurations, in which mode.

Configurations are small so the proofs close: K in {1, 2, 3}, T in {1, 2} and the smallest
activation buffer (8 columns), K in {2, 3} with chunks that span rows, K x T = 1 x 1 and
2 x 2 with the dual-sparse mode (its operand select), and 2 x 2 and 2 x 1 with spans with
registered edges (the MAC array and the core); the job sizes are bounded in each harness. ``prove`` is
k-induction (unbounded), ``bmc`` holds for every behaviour up to ``depth`` cycles from reset,
``cover`` shows each cover statement reachable within ``depth`` cycles. The fast proofs run in
CI; ``slow`` ones only with ``sparsemac formal --all``.
"""

from ...hw.config import ArrayConfig
from .activation_buffer import ActivationBufferHarness
from .core import SparseMACCoreHarness, liveness_bound
from .csr_streamer import CSRStreamerHarness
from .host_link import FrameReceiverHarness, HostLinkHarness, ReplySenderHarness
from .mac_array import MACArrayHarness
from .operand_select import OperandSelectHarness
from .runner import ProofSpec
from ...hw.errors import InputError

__all__ = ["CONFIGS", "proofs", "select", "config_name"]

#: The configurations proved: every K in {1, 2, 3} with every T in {1, 2}; and spanning rows
#: (``s1``, which needs K > 1) at K in {2, 3}, T = 1 (the schedule does not depend on T) and
#: at K = 2, T = 2 (the MAC array's two reductions per token).
CONFIGS = {
    **{f"k{lanes}t{tokens}": ArrayConfig(lanes=lanes, token_lanes=tokens, max_in_features=8)
       for lanes in (1, 2, 3) for tokens in (1, 2)},
    **{f"k{lanes}t{tokens}s1": ArrayConfig(lanes=lanes, token_lanes=tokens, max_in_features=8,
                                           span_rows=1)
       for lanes, tokens in ((2, 1), (3, 1), (2, 2))},
    **{f"k{lanes}t{tokens}a1": ArrayConfig(lanes=lanes, token_lanes=tokens, max_in_features=8,
                                           dual_sparse=1)
       for lanes, tokens in ((1, 1), (2, 2))},
    # Skid buffers on the core's edges and registered multipliers, with and without spans.
    "k2t2r1": ArrayConfig(lanes=2, token_lanes=2, max_in_features=8, registered=1),
    "k2t1s1r1": ArrayConfig(lanes=2, token_lanes=1, max_in_features=8, span_rows=1,
                            registered=1),
}

#: The registered configurations, which only the MAC array's and the core's proofs use (the
#: other blocks are the same with or without).
_REGISTERED = tuple(name for name, config in CONFIGS.items() if config.registered)

#: The configurations without the dual-sparse mode, which only the operand select's proofs use.
_WEIGHTS = tuple(name for name, config in CONFIGS.items()
                 if not config.dual_sparse and not config.registered)

#: The configurations that do not span rows.
_PLAIN = tuple(name for name in _WEIGHTS if not CONFIGS[name].span_rows)

_DUAL = ("k1t1a1", "k2t2a1")

#: Configurations of the fast (CI) run of each proof: the extremes of K with both T.
_FAST = ("k1t1", "k2t2", "k3t1")

#: Every K at T = 1, and spanning at T = 1.
_T1 = ("k1t1", "k2t1", "k3t1")
_T1_SPAN = ("k2t1s1", "k3t1s1")


def config_name(config):
    """The key of ``config`` in :data:`CONFIGS`."""
    return (f"k{config.lanes}t{config.token_lanes}" + ("s1" if config.span_rows else "")
            + ("a1" if config.dual_sparse else "") + ("r1" if config.registered else ""))


def _liveness_depth(config):
    # The bound counts from the acceptance, which fairness puts in the first cycle; two more
    # cycles let the assertion see the bound exceeded.
    return liveness_bound(config) + 2


#: (harness, property, mode, depth or a function of the config, configs, fast configs).
#: The streamer does not depend on T, so it is proved at T = 1; the frame receiver depends on
#: neither K nor T (only through the payload buffer's beat sizes, which it does not use).
_PLAN = [
    (CSRStreamerHarness, "protocol", "prove", 2, _T1 + _T1_SPAN, _T1 + ("k2t1s1",)),
    (CSRStreamerHarness, "conservation", "bmc", 8, ("k1t1", "k2t1", "k2t1s1"),
     ("k1t1", "k2t1", "k2t1s1")),
    # The solver's time grows steeply with depth here: 10 for K=1 takes ~5 min, for K=2 and
    # K=3 over 15 min on the shared machine; 9 takes 3 to 5 min.
    (CSRStreamerHarness, "conservation", "bmc", 10, ("k1t1",), ()),
    (CSRStreamerHarness, "conservation", "bmc", 9, ("k2t1", "k3t1") + _T1_SPAN, ()),
    (CSRStreamerHarness, "cover", "cover", 12, _T1 + _T1_SPAN, ("k2t1", "k2t1s1")),
    (ActivationBufferHarness, "protocol", "prove", 2, _PLAIN, _FAST),
    (ActivationBufferHarness, "scoreboard", "bmc", 10, _PLAIN, ("k2t1",)),
    (ActivationBufferHarness, "cover", "cover", 14, ("k1t1", "k2t2"), ("k1t1",)),
    (MACArrayHarness, "protocol", "prove", 2, _WEIGHTS + _REGISTERED, _FAST),
    (MACArrayHarness, "rows", "bmc", 12, _WEIGHTS + _REGISTERED, ("k2t2", "k2t2s1", "k2t2r1")),
    (MACArrayHarness, "cover", "cover", 8, _WEIGHTS + _REGISTERED, ("k1t1",)),
    (OperandSelectHarness, "protocol", "bmc", 14, _DUAL, _DUAL),
    (OperandSelectHarness, "once", "bmc", 10, _DUAL, _DUAL),
    (OperandSelectHarness, "cover", "cover", 12, _DUAL, ("k1t1a1",)),
    (SparseMACCoreHarness, "protocol", "bmc", 16, _WEIGHTS + _REGISTERED, ("k1t1",)),
    (SparseMACCoreHarness, "job", "bmc", 14, _WEIGHTS + _REGISTERED,
     ("k1t1", "k2t2", "k2t1s1", "k2t2r1")),
    (SparseMACCoreHarness, "liveness", "bmc", _liveness_depth, _WEIGHTS + _REGISTERED, ()),
    (SparseMACCoreHarness, "cover", "cover", 16, _WEIGHTS + _REGISTERED, ("k2t1",)),
    (FrameReceiverHarness, "protocol", "prove", 2, ("k1t1",), ("k1t1",)),
    (FrameReceiverHarness, "rx_ready", "prove", 2, ("k1t1",), ("k1t1",)),
    (FrameReceiverHarness, "cover", "cover", 24, ("k1t1",), ("k1t1",)),
    (ReplySenderHarness, "protocol", "bmc", 24, ("k1t1", "k2t2"), ("k1t1",)),
    (ReplySenderHarness, "cover", "cover", 32, ("k1t1", "k2t2"), ("k1t1",)),
    (HostLinkHarness, "protocol", "bmc", 20, ("k1t1", "k2t2"), ("k1t1",)),
    (HostLinkHarness, "cover", "cover", 16, ("k1t1", "k2t2"), ("k1t1",)),
]


def proofs(everything=False):
    """The proofs to run: the fast ones, or with ``everything`` every one (the rest marked
    slow), as a list of :class:`ProofSpec`."""
    specs = []
    for harness, prop, mode, depth, names, fast in _PLAN:
        for name in names:
            if everything or name in fast:
                config = CONFIGS[name]
                specs.append(ProofSpec(harness, prop, config, mode,
                                       depth(config) if callable(depth) else depth,
                                       slow=name not in fast))
    return specs


def select(everything=False, blocks=None, props=None, configs=None):
    """:func:`proofs`, keeping only the given block class names, property names and config
    names (each None for all).

    Raises
    ------
    ValueError
        If a name matches no proof.
    """
    specs = proofs(everything=True)
    for label, wanted, key in (("block", blocks, lambda spec: spec.block),
                               ("property", props, lambda spec: spec.prop),
                               ("config", configs, lambda spec: config_name(spec.config))):
        known = sorted({key(spec) for spec in specs})
        for name in wanted or ():
            if name not in known:
                raise InputError(f"unknown {label} {name!r}; known: {', '.join(known)}")
        if wanted:
            specs = [spec for spec in specs if key(spec) in wanted]
    if not everything:
        specs = [spec for spec in specs if not spec.slow]
    if not specs:
        raise InputError("no proof matches; add --all to include the slow ones")
    return specs
