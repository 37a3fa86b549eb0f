"""The inference plane: loaded versions, the version manager, micro-batching and the data plane, the
one surface the protocol adapters call."""
