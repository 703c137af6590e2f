"""hermes-api: one OpenAI-compatible server, one port, many Hermes profiles."""

__version__ = "0.1.0"
