"""Moving images between machines: the registry client (pull, push) and server."""
