"""The Engine API server: routes, stream framing, connection hijacking, errors -> HTTP."""
