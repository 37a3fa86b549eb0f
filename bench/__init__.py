"""Side-by-side load benchmark: this service, echo ceilings, a naive server, LitServe, KServe and Triton."""
