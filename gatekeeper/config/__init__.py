"""Load and validate a gatekeeper TOML config into the model (:mod:`gatekeeper.model`).

Every problem is reported as one :class:`ConfigError` line that names the file and
the key (``door[0].sequence[2]``) so an admin can fix it without reading code.
:mod:`~gatekeeper.config.load` reads the TOML tables into the model,
:mod:`~gatekeeper.config.keyfiles` the files a config names (key files, one-time
sequences files: their modes, owners and writability), :mod:`~gatekeeper.config.checks`
holds the rules across doors.
"""

from __future__ import annotations

from gatekeeper.errors import GatekeeperError


class ConfigError(GatekeeperError):
    """A config problem, already phrased as one line for the admin."""
