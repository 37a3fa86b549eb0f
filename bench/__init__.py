"""Side-by-side load benchmark: this service, echo ceilings, a naive server and LitServe."""
