"""The HTTP/1.1 layer under every protocol: the guarded connection, the middleware, request bodies."""
