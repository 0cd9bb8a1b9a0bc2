"""Formal proofs of the gateware: harnesses around the hw/ blocks and the proof runner."""
