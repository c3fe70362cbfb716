"""The one error type the CLI turns into a one-line message and exit status 2."""

from __future__ import annotations


class GatekeeperError(Exception):
    """A problem the admin can fix: the message names the file, key or resource."""
