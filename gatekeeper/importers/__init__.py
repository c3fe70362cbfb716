"""Importers: turn other port knockers' configs into gatekeeper TOML (``gatekeeper import-*``)."""
