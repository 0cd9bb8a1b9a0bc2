"""Board builds: the ULX3S bitstream of the default config, its manifest, and the build flow."""
