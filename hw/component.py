"""The base of every block built for one array configuration."""

from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .config import check_config
from .formats import CoreFormats

__all__ = ["ArrayComponent", "JobComponent"]


class ArrayComponent(wiring.Component):
    """A component parameterised by an :class:`ArrayConfig`, with the formats derived from it.

    Checks the configuration and builds its formats once, for every block (as amaranth's
    ``FIFOInterface`` shares its constructor). A subclass names its formats class in
    :attr:`Formats` and returns its interface from :meth:`members`.

    Parameters
    ----------
    config : ArrayConfig

    Raises
    ------
    TypeError
        If ``config`` is not an :class:`ArrayConfig`.
    """

    #: The formats class the interface is built from (called with the config).
    Formats = CoreFormats

    def __new__(cls, config, *args, **kwargs):
        # Refused before the object exists, so a bad config leaves no "created but never used"
        # elaboratable behind to warn about.
        cls.check(config)
        return super().__new__(cls, config, *args, src_loc_at=1, **kwargs)

    def __init__(self, config):
        self._config = config
        self._formats = self.Formats(config)
        super().__init__(self.members(self._formats))

    @classmethod
    def check(cls, config):
        """Raises a clear error unless this block can be built for ``config``; a subclass with
        further needs extends it."""
        check_config(config)

    def members(self, formats):
        """The component's signature, or a dict of its members, built from ``formats``."""
        raise NotImplementedError

    @property
    def config(self):
        return self._config

    @property
    def formats(self):
        return self._formats


class JobComponent(ArrayComponent):
    """An :class:`ArrayComponent` of the core's pipeline that is started for each job.

    Its interface is the job's two control inputs, then the block's own streams, which a
    subclass returns from :meth:`streams`.

    Attributes
    ----------
    start : In(1)
        Begins a job: one cycle, while ``job`` is valid.
    job : In(formats.job)
        The job's parameters.
    """

    def members(self, formats):
        return {"start": In(1), "job": In(formats.job), **self.streams(formats)}

    def streams(self, formats):
        """The block's stream members, a dict built from ``formats``."""
        raise NotImplementedError
