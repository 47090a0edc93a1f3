"""kdns: a small, fast cluster DNS service-discovery resolver for Kubernetes."""

__version__ = "0.1.0"
