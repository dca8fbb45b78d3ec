"""The host: HostFacts, the ordered probes that fill them, engine binaries and the pre-start host check."""
