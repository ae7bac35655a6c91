"""sendonce: a gRPC delivery sidecar that sends each notification at most once."""

__version__ = "0.1.0"
