"""How often stream inputs go idle and outputs refuse beats: one description for every
testbench.

The Amaranth testbenches (:func:`~sparsemac.sim.amaranth_sim.run_core_job`) and the cocotb ones
(:data:`~sparsemac.sim.cocotb.testbench.PROFILES`) both take a :class:`StallPattern`.
"""

from dataclasses import dataclass

__all__ = ["StallPattern", "IDEAL"]


@dataclass(frozen=True)
class StallPattern:
    """Probabilities of an idle cycle before each input beat and of a not-ready output cycle.

    A zero pattern gives ideal streams, under which a cycle count must equal the cycle model's.
    """
    #: Probability of an idle cycle before each input beat.
    idle: float = 0.0
    #: Probability of a not-ready cycle on each output.
    backpressure: float = 0.0
    #: Makes the pattern replayable.
    seed: int = 0
    #: Labels it in test names and messages.
    name: str = ""

    @property
    def ideal(self):
        return self.idle == 0 and self.backpressure == 0


#: Ideal streams: inputs always valid while data remains, outputs always ready.
IDEAL = StallPattern(name="ideal")
