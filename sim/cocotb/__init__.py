"""cocotb testbenches of the core and its blocks (run through cocotb_tools.runner)."""
