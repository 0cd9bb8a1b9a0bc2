"""Design-space sweeps on Dask: array configs x models x layers x pruning methods x sparsities
(x feed-forward activations).

A spec (TOML, :func:`load_spec`) names the axes and their values; every combination is one
*point* (:class:`SweepPoint`), an independent task that carries only its small parameters. A
Dask worker loads the model, captures the layer's input on the built-in sentence, prunes and
quantises the layer, and returns a :class:`PointResult`: the exact cycle model's sparse and dense
cycles and the layer's fidelity against the float layer. Points drawn for verification also run
on the Verilator device (bit-exact sums and cycles); a ``[build]`` section adds one board build
per array config and placement seed.

Results go to one CSV in the output folder, one row per point, keyed by a hash of the point's
parameters and the design hash, appended and flushed as each point completes: a rerun computes
only the points not in the table, an interrupted sweep resumes, and rows of other specs or
designs stay untouched. A point that raises is recorded with its error and the sweep goes on.
"""


from .cluster import CONNECT_TIMEOUT_S, check_scheduler_address
from .points import SweepPoint, expand_points
from .report import LISTED_FAILURES, DesignPoint, SweepReport
from .run import run_sweep
from .spec import BuildSpec, SweepSpec, VerifySpec, load_spec, parse_spec
from .table import RESULTS_FILE
from .worker import COLUMNS, PointResult, run_point

__all__ = ["RESULTS_FILE", "COLUMNS", "CONNECT_TIMEOUT_S", "LISTED_FAILURES", "VerifySpec",
           "BuildSpec", "SweepSpec", "SweepPoint", "PointResult", "DesignPoint", "SweepReport",
           "load_spec", "parse_spec", "expand_points", "check_scheduler_address", "run_point",
           "run_sweep"]
