"""berthd, the Engine API daemon (its own issue). Until it lands, the entry point
says so in one line instead of pretending to serve."""
