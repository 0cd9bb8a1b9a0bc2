"""The board design compiled by Verilator, its UART bridged to a pseudo-terminal.

:class:`SimulatedBoard` runs :class:`~sparsemac.hw.board_top.BoardTop` (the RTL of the ULX3S
bitstream, with a UART of a few clocks per bit instead of the PLL clock) behind a pty, so the
real host driver, :class:`~sparsemac.devices.fpga.FPGADevice` and pyserial included, talks to
it exactly as to a board::

    with SimulatedBoard(config) as board:
        device = open_device("fpga", config, port=board.port)

The Verilog and the executable are cached outside the source tree (``cache_dir("board_sim")``).
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
import tty
from pathlib import Path

from ..bitstreams.build import BOARDS, DEFAULT_BOARD
from ..hw.config import ArrayConfig
from ..hw.uart import uart_divisor
from ..sim.toolchain import (cache_dir, check_build_tools, file_lock, tool_versions,
                             verilator_environment)
from ..sim.verilog import generate_verilog
from ..sw.progress import phase
from ..hw.errors import RunFailure

__all__ = ["SIM_CLOCK_HZ", "SIM_BAUD", "SIM_TIMEOUT_S", "build_board_sim", "SimulatedBoard"]

#: Nominal clock of the simulated board: only the ratio to the baud rate matters.
SIM_CLOCK_HZ = 4_000_000
#: 4 cycles per bit, the fastest the UART takes.
SIM_BAUD = 1_000_000
#: 20 000 cycles: long against a frame's bytes, short in wall time.
SIM_TIMEOUT_S = 0.005

HARNESS = Path(__file__).resolve().parent / "board_harness.cpp"
TOP_NAME = "sparsemac_board"
_VERILATOR_FLAGS = ("-O2", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
                    "--no-timing", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC")


def sim_board(config):
    """The :class:`BoardTop` the simulation compiles: the board RTL with the simulation UART."""
    from ..hw.board_link import design_hash
    from ..hw.board_top import BoardTop
    return BoardTop(config, clock_hz=SIM_CLOCK_HZ, baud=SIM_BAUD,
                    design_hash=design_hash(config), timeout_s=SIM_TIMEOUT_S)


def build_board_sim(config):
    """The path of the simulator executable of ``config``, built only on a cache miss.

    Raises
    ------
    ToolMissingError
        If g++, make or perl is missing.
    RuntimeError
        If Verilator or the C++ build fails (the message quotes the log).
    """
    if not isinstance(config, ArrayConfig):
        raise TypeError(f"config must be an ArrayConfig, not {config!r}")
    board = sim_board(config)
    # On a cache hit the design is not elaborated; that is not the mistake Amaranth warns of.
    board._MustUse__silence = True
    name = f"{TOP_NAME}_{SIM_CLOCK_HZ}_{SIM_BAUD}"
    verilog = generate_verilog(config, component=board, name=name)
    key = hashlib.sha256(json.dumps({
        "verilog": verilog.name, "harness": HARNESS.read_text(), "flags": _VERILATOR_FLAGS,
        "tools": tool_versions()}, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir("board_sim", f"{config.key()}_{key}")
    executable = folder / "board_sim"
    with file_lock(folder / "build.lock"):
        if executable.exists():
            return executable
        check_build_tools()
        env = verilator_environment()
        shutil.rmtree(folder / "obj", ignore_errors=True)
        log = folder / "build.log"
        commands = [
            ["verilator", "--cc", "--exe", "--build", str(verilog), str(HARNESS),
             "--top-module", name, "--prefix", "Vboard", "-Mdir", "obj", *_VERILATOR_FLAGS,
             "-CFLAGS", "-O1 -DVERILATED_TOP_HEADER='\"Vboard.h\"' -DVERILATED_TOP_CLASS=Vboard",
             "-j", str(os.cpu_count() or 1), "-o", "board_sim"],
        ]
        with open(log, "w") as output, phase(f"building the board simulation of "
                                             f"{config.describe()} (once; cached)"):
            for command in commands:
                result = subprocess.run(command, cwd=folder, env=env, stdout=output,
                                        stderr=subprocess.STDOUT)
                if result.returncode != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                    raise RunFailure(f"building the board simulation failed ({log}):\n{tail}")
        (folder / "obj" / "board_sim").replace(executable)
    return executable


class SimulatedBoard:
    """A running board simulation behind a pseudo-terminal.

    Parameters
    ----------
    config : ArrayConfig or None
        None for the config of the ULX3S bitstream (:data:`~sparsemac.hw.boards.BOARDS`).

    Attributes
    ----------
    port : str
        The pty to open with pyserial (or :class:`FPGADevice`).
    """

    def __init__(self, config=None):
        self.config = config = BOARDS[DEFAULT_BOARD].config if config is None else config
        executable = build_board_sim(config)
        master, slave = os.openpty()
        tty.setraw(slave)
        self._master, self._slave = master, slave
        self.port = os.ttyname(slave)
        self._process = subprocess.Popen(
            [str(executable), str(master), str(uart_divisor(SIM_CLOCK_HZ, SIM_BAUD))],
            pass_fds=(master,), stdin=subprocess.DEVNULL)
        time.sleep(0.05)
        if self._process.poll() is not None:
            self.close()
            raise RunFailure(f"the board simulation exited at once ({self._process.returncode})")

    def close(self):
        """Stops the simulation and closes the pty."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
