"""Hand-written kernels that XLA lacks on some backends (see each module)."""
