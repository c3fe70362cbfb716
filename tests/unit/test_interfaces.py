"""gatekeeper.netfilter.interfaces without a lab: the namespace's interfaces are given."""

from __future__ import annotations

import logging

import pytest

from gatekeeper.config import ConfigError
from gatekeeper.config.load import loads
from gatekeeper.model import Settings
from gatekeeper.netfilter import interfaces
from gatekeeper.netfilter.interfaces import LinkWatcher, describe, require_present

DOOR = '[[door]]\nname = "ssh"\nsequence = ["7000:udp", "8000", "9000:udp"]\nopens = ["22"]\n'


class Links:
    """Stands in for the kernel: ``present()`` answers what the test set last."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **links: int) -> None:
        self.links = links
        monkeypatch.setattr(interfaces, "present", lambda: dict(self.links))


def settings(*names: str, hotplug: tuple[str, ...] = ()) -> Settings:
    return Settings(interfaces=names, hotplug_interfaces=hotplug)


def poll(watcher: LinkWatcher, s: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher, "_next", 0.0)  # no waiting for the next second
    watcher.poll(s)


def rows(watcher: LinkWatcher) -> dict[str, tuple[bool, bool, dict[str, int]]]:
    return {name: (hotplug, up, changes) for name, hotplug, up, changes in watcher.rows()}


def test_absent_interface_is_refused_but_wildcards_and_hotplug_are_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    Links(monkeypatch, lo=1, ens3=2)
    config = loads('[gatekeeper]\ninterfaces = ["ppp+", "wg0", "eth0"]\n'
                   'hotplug_interfaces = ["wg0"]\n' + DOOR, "gk.toml")
    with pytest.raises(ConfigError) as info:
        require_present(config)
    assert str(info.value).startswith("gk.toml: gatekeeper.interfaces[2]: 'eth0' is not present here "
                                      "(present: ens3, lo);"), info.value
    require_present(loads('[gatekeeper]\ninterfaces = ["ppp+", "wg0", "ens3"]\n'
                          'hotplug_interfaces = ["wg0"]\n' + DOOR))
    require_present(loads(DOOR))  # [] = all but loopback: nothing to be present


def test_rename_back_and_removal_are_logged_and_counted(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gatekeeper")
    kernel = Links(monkeypatch, lo=1, eth0=2, eth1=3)
    watcher, s = LinkWatcher(), settings("eth0", "eth1", "ens+")
    poll(watcher, s, monkeypatch)
    assert caplog.messages == []
    zero = {"removed": 0, "renamed": 0, "appeared": 0}
    assert rows(watcher) == {"eth0": (False, True, zero), "eth1": (False, True, zero)}

    kernel.links = {"lo": 1, "eth0": 2, "wan": 3}
    poll(watcher, s, monkeypatch)
    assert caplog.messages[-1] == ("interface eth1 was renamed to wan: gatekeeper.interfaces names "
                                   "eth1, so traffic arriving on wan is not guarded")
    assert caplog.records[-1].levelno == logging.ERROR
    assert rows(watcher)["eth1"] == (False, False, zero | {"renamed": 1})
    assert describe(watcher.status(s)) == ("interfaces: eth0 present, eth1 MISSING (renamed to wan), "
                                           "ens+ (wildcard: none now)")

    kernel.links = {"lo": 1, "eth0": 2, "ens4": 3}  # renamed again, into the wildcard
    poll(watcher, s, monkeypatch)
    assert rows(watcher)["eth1"][2]["renamed"] == 1, "still absent: no second count"

    kernel.links = {"lo": 1, "eth0": 2, "eth1": 3}
    poll(watcher, s, monkeypatch)
    assert caplog.messages[-1] == "interface eth1 is back: guarded again"
    assert rows(watcher)["eth1"] == (False, True, zero | {"renamed": 1, "appeared": 1})

    kernel.links = {"lo": 1, "eth1": 3, "ens5": 2}  # eth0 renamed to a guarded name
    poll(watcher, s, monkeypatch)
    assert caplog.messages[-1] == ("interface eth0 was renamed to ens5: still guarded "
                                   "(interfaces lists ens+)")
    assert caplog.records[-1].levelno == logging.WARNING

    kernel.links = {"lo": 1, "ens5": 2}
    poll(watcher, s, monkeypatch)
    assert caplog.messages[-1].startswith("interface eth1 was removed: ")
    assert caplog.records[-1].levelno == logging.ERROR
    assert rows(watcher)["eth1"][2]["removed"] == 1


def test_replaced_interface_and_hotplug_absent_at_start(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gatekeeper")
    kernel = Links(monkeypatch, lo=1, eth0=2)
    watcher, s = LinkWatcher(), settings("eth0", "wg0", hotplug=("wg0",))
    poll(watcher, s, monkeypatch)
    assert caplog.messages == ["interface wg0 (hotplug_interfaces) is not present: guarded as soon "
                               "as it appears"]
    assert describe(watcher.status(s)) == "interfaces: eth0 present, wg0 absent (hotplug)"
    kernel.links = {"lo": 1, "eth0": 5, "wg0": 6}  # eth0 deleted and made again; wg0 comes
    poll(watcher, s, monkeypatch)
    assert caplog.messages[-2:] == [
        "interface eth0 was replaced (ifindex 2, now 5): guarded (the rules match its name)",
        "interface wg0 appeared: guarded"]
    assert rows(watcher)["eth0"][2] == {"removed": 1, "renamed": 0, "appeared": 1}
    kernel.links = {"lo": 1, "eth0": 5}
    poll(watcher, s, monkeypatch)
    assert caplog.messages[-1] == ("interface wg0 (hotplug_interfaces) was removed: guarded again "
                                   "when it comes back")
    assert caplog.records[-1].levelno == logging.WARNING
    assert rows(watcher)["wg0"] == (True, False, {"removed": 1, "renamed": 0, "appeared": 1})


def test_a_reload_keeps_the_counts_of_interfaces_it_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = Links(monkeypatch, lo=1, eth0=2, eth1=3)
    watcher = LinkWatcher()
    poll(watcher, settings("eth0", "eth1"), monkeypatch)
    kernel.links = {"lo": 1, "eth0": 2}
    poll(watcher, settings("eth0", "eth1"), monkeypatch)
    watcher.poll(settings("eth1", "eth2"))  # a new config: polled at once, eth0 no longer watched
    got = rows(watcher)
    assert set(got) == {"eth1", "eth2"}
    assert got["eth1"][2]["removed"] == 1
    assert got["eth2"] == (False, False, {"removed": 1, "renamed": 0, "appeared": 0})


def test_no_interfaces_means_all_but_loopback() -> None:
    assert describe([]) == "interfaces: all but lo"
    assert LinkWatcher().rows() == []
