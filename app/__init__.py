"""The application layer: the ``sparsemac`` command line (:mod:`.cli`), its commands
(:mod:`.commands`: each parses, calls one pipeline and prints its report) and the pipelines
(:mod:`.pipelines`: the measurements behind the commands, each returning a report dataclass).
It drives the library below it (``sparsemac.sw``, ``sparsemac.hw``, ``sparsemac.devices``, ...)
and nothing imports it.
"""
