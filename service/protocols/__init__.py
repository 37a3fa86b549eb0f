"""The protocol adapters, one folder each: decode a request, call the data plane, encode the answer."""
