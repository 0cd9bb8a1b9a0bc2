"""Every back end that runs the sparse MAC core, one module each, and :func:`open_device`.

``reference`` (:mod:`.reference`)
    The golden model and the exact cycle model: instant, and the yardstick for the others.
``amaranth`` (:mod:`.amaranth`)
    The core in Amaranth's Python simulator: slow, needs no C++ compiler.
``verilator`` (:mod:`.verilator`, with its C++ harness ``verilator_harness.cpp``)
    The core compiled by Verilator into a shared library, driven at full rate from C++.
``fpga`` (:mod:`.fpga`; the board simulated behind a pty in :mod:`.board_sim`, with
``board_harness.cpp``)
    A ULX3S board over its USB serial port, or the same board top simulated.

All of them implement :class:`sparsemac.sw.device.Device`. A back end's module is imported
only when it is opened, so that opening ``reference`` needs neither Amaranth's simulator nor a
C++ toolchain.
"""

import importlib

from ..hw.errors import InputError

__all__ = ["BACKENDS", "open_device"]

#: Back-end name -> "module:class" of its device, imported only when opened.
BACKENDS = {
    "reference": "sparsemac.devices.reference:ReferenceDevice",
    "amaranth": "sparsemac.devices.amaranth:AmaranthDevice",
    "verilator": "sparsemac.devices.verilator:VerilatorDevice",
    "fpga": "sparsemac.devices.fpga:FPGADevice",
}


def open_device(backend, config=None, **options):
    """Opens a device by back-end name.

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS`.
    config : ArrayConfig or None
        None for the back end's own default: :data:`~sparsemac.hw.config.DEFAULT_CONFIG`, or for
        ``fpga`` the config of the board's bitstream.
    **options
        Passed to the device (e.g. ``fst_path`` for ``verilator``, ``port`` for ``fpga``).

    Returns
    -------
    sparsemac.sw.device.Device

    Raises
    ------
    ValueError
        If ``backend`` is unknown.
    DeviceError
        If the device cannot be built or opened.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[backend].split(":")
    device_class = getattr(importlib.import_module(module_name), class_name)
    return device_class(**options) if config is None else device_class(config, **options)
