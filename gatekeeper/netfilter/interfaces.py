"""The guarded interfaces: present before anything is installed, watched while running.

iptables matches ``-i eth0`` by name, and a rule naming an interface that does not exist
matches nothing: ``interfaces = ["eth0"]`` on a box whose uplink is ``ens3`` guards
nothing at all, and the protected ports answer whatever the rest of the firewall says.
So ``check``, ``run`` and a reload refuse a named interface that is absent from the
network namespace, unless it is a wildcard (``ppp+``, iptables' own: it names a family,
never one link) or listed in ``hotplug_interfaces`` (it may come later).

While running, :class:`LinkWatcher` reads the namespace's interfaces once a second
(``if_nameindex``: one netlink dump, no privilege) and logs, counts and exports a guarded
interface that is removed, renamed (its traffic then arrives under a name no rule
matches) or comes back.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gatekeeper.config import ConfigError
from gatekeeper.model import Config, Settings

log = logging.getLogger("gatekeeper")

POLL_SECONDS = 1.0
CHANGES = ("removed", "renamed", "appeared")  # the change label of the counter


def is_wildcard(name: str) -> bool:
    """iptables' ``ppp+``: every interface whose name starts with ``ppp``."""
    return name.endswith("+")


def matches(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if is_wildcard(pattern) else name == pattern


def present() -> dict[str, int]:
    """The interfaces of this process's network namespace: name -> ifindex."""
    return {name: index for index, name in socket.if_nameindex()}


def require_present(config: Config) -> None:
    """Raise a one-line :class:`ConfigError` for the first named interface that is absent
    and may not be (neither a wildcard nor in ``hotplug_interfaces``)."""
    settings = config.settings
    try:
        links = present()
    except OSError as exc:
        raise ConfigError(f"{config.path}: gatekeeper.interfaces: cannot list this host's "
                          f"interfaces ({exc.strerror or exc})") from None
    for i, name in enumerate(settings.interfaces):
        if is_wildcard(name) or name in settings.hotplug_interfaces or name in links:
            continue
        raise ConfigError(
            f"{config.path}: gatekeeper.interfaces[{i}]: {name!r} is not present here "
            f"(present: {', '.join(sorted(links))}); a rule for it would guard nothing: fix the "
            "name, or list it in gatekeeper.hotplug_interfaces if it comes later")


@dataclass
class _Link:
    name: str
    hotplug: bool
    index: int | None = None  # while present
    last_index: int | None = None  # the last index it had (to tell a rename)
    seen: bool = False  # polled at least once
    renamed_to: str = ""  # while absent after a rename
    changes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANGES, 0))


class LinkWatcher:
    """Polls the guarded interfaces of ``settings``; the supervisor calls :meth:`poll`
    from its loop, the metrics thread reads :meth:`rows`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}
        self._settings: Settings | None = None
        self._next = 0.0

    def poll(self, settings: Settings) -> None:
        """At most once every POLL_SECONDS: compare the interfaces with the last poll."""
        now = time.monotonic()
        if settings is self._settings and now < self._next:
            return
        self._next = now + POLL_SECONDS
        try:
            links = present()
        except OSError as exc:
            log.error("cannot list the network interfaces (%s): guarded interfaces unchecked",
                      exc.strerror or exc)
            return
        names = {index: name for name, index in links.items()}
        with self._lock:
            if settings is not self._settings:
                self._follow(settings)
            for link in self._links.values():
                self._update(link, links, names, settings.interfaces)

    def _follow(self, settings: Settings) -> None:
        """The interfaces of a new config; counters carry over for names kept."""
        old = self._links
        self._links = {}
        for name in settings.interfaces:
            if not is_wildcard(name):
                link = old.get(name) or _Link(name, False)
                link.hotplug = name in settings.hotplug_interfaces
                self._links[name] = link
        self._settings = settings

    @staticmethod
    def _update(link: _Link, links: dict[str, int], names: dict[int, str],
                guarded: tuple[str, ...]) -> None:
        index = links.get(link.name)
        first = not link.seen
        link.seen = True
        was, known = link.index, link.last_index is not None
        if index is not None:
            link.index = link.last_index = index
            link.renamed_to = ""
            if was == index:
                return
            if was is not None:  # deleted and made again between two polls
                link.changes["removed"] += 1
                link.changes["appeared"] += 1
                log.warning("interface %s was replaced (ifindex %d, now %d): guarded (the rules "
                            "match its name)", link.name, was, index)
            elif not first:
                link.changes["appeared"] += 1
                if known:
                    log.info("interface %s is back: guarded again", link.name)
                else:
                    log.info("interface %s appeared: guarded", link.name)
            return
        link.index = None
        if first:
            if link.hotplug:
                log.warning("interface %s (hotplug_interfaces) is not present: guarded as soon as "
                            "it appears", link.name)
            else:  # gone between the start-up check and the first poll
                link.changes["removed"] += 1
                log.error("interface %s is not present: if its traffic arrives on a link of "
                          "another name, that link is not guarded", link.name)
            return
        if was is None:
            return  # still absent
        new = names.get(was, "")
        if new:
            link.renamed_to = new
            link.changes["renamed"] += 1
            also = next((p for p in guarded if matches(p, new)), None)
            if also is not None:
                log.warning("interface %s was renamed to %s: still guarded (interfaces lists "
                            "%s)", link.name, new, also)
            else:
                log.error("interface %s was renamed to %s: gatekeeper.interfaces names %s, so "
                          "traffic arriving on %s is not guarded", link.name, new, link.name, new)
            return
        link.changes["removed"] += 1
        if link.hotplug:
            log.warning("interface %s (hotplug_interfaces) was removed: guarded again when it "
                        "comes back", link.name)
        else:
            log.error("interface %s was removed: if its traffic comes back on a link of another "
                      "name, that link is not guarded", link.name)

    def rows(self) -> list[tuple[str, bool, bool, dict[str, int]]]:
        """(name, hotplug, present, changes) of each watched interface, for the metrics."""
        with self._lock:
            return [(k.name, k.hotplug, k.index is not None, dict(k.changes))
                    for k in self._links.values()]

    def status(self, settings: Settings) -> list[dict[str, Any]]:
        """Each entry of ``interfaces``, for ``gatekeeper status``."""
        try:
            links = sorted(present())
        except OSError:
            links = []
        with self._lock:
            watched = dict(self._links)
        out: list[dict[str, Any]] = []
        for name in settings.interfaces:
            link = watched.get(name)
            if is_wildcard(name):
                out.append({"name": name, "wildcard": True,
                            "matching": [n for n in links if matches(name, n)]})
            elif link is not None and link.seen:
                out.append({"name": name, "present": link.index is not None,
                            "hotplug": link.hotplug, "renamed_to": link.renamed_to})
            else:
                out.append({"name": name, "present": name in links,
                            "hotplug": name in settings.hotplug_interfaces, "renamed_to": ""})
        return out


def describe(entries: list[dict[str, Any]]) -> str:
    """The ``interfaces:`` line of ``gatekeeper status``."""
    if not entries:
        return "interfaces: all but lo"
    words = []
    for e in entries:
        if e.get("wildcard"):
            words.append(f"{e['name']} (wildcard: {', '.join(e['matching']) or 'none now'})")
        elif e["present"]:
            words.append(f"{e['name']} present")
        elif e["hotplug"] and not e["renamed_to"]:
            words.append(f"{e['name']} absent (hotplug)")
        else:
            renamed = f" (renamed to {e['renamed_to']})" if e["renamed_to"] else ""
            words.append(f"{e['name']} MISSING{renamed}")
    return "interfaces: " + ", ".join(words)
