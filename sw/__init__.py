"""Host software: pruning, quantisation, CSR packing, golden and cycle models, the driver."""
