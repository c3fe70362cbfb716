"""gatekeeper: an inline port-knocking gatekeeper for Linux gateways."""

__version__ = "0.1.0"
