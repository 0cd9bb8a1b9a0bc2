"""Verilog generation, Verilator builds, cocotb regressions and the simulated FPGA."""
