"""Which control plane: the endpoints document, probes, the modes' policy and the resolver."""
