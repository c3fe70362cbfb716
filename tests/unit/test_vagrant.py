"""vagrant/: the shell scripts parse, the config templates are valid, and the Vagrantfile
validates, without booting anything and without running a provisioning script (they
install packages and rewrite system configuration).

``vagrant`` is Debian 12's package (scripts/setup.sh installs it, with vagrant-libvirt):
missing locally, the Vagrantfile tests skip; under CI they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from gatekeeper.cli import main
from tests.fixtures.configs import ROOT
from tests.fixtures.needs import need_tool

VAGRANT = ROOT / "vagrant"
SCRIPTS = sorted([*VAGRANT.glob("*.sh"), *(VAGRANT / "provision").glob("*.sh")])


def test_the_scripts_are_there() -> None:
    names = {p.relative_to(VAGRANT).as_posix() for p in SCRIPTS}
    assert {"soak.sh", "provision/common.sh", "provision/gateway.sh", "provision/client.sh",
            "provision/attacker.sh"} <= names
    assert (VAGRANT / "Vagrantfile").is_file()
    assert (VAGRANT / "README.md").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(VAGRANT).as_posix())
def test_bash_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    if script.name != "common.sh":  # sourced, not run
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text


def test_gateway_guards_only_the_private_interface(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The config gateway.sh writes, from its template, passes `gatekeeper check` on the
    VM (whose interfaces are lo, eth0 and eth1), names exactly one interface and a door that
    opens the second sshd port, never 22."""
    from gatekeeper.netfilter import interfaces

    monkeypatch.setattr(interfaces, "present", lambda: {"lo": 1, "eth0": 2, "eth1": 3})
    template = (VAGRANT / "provision" / "gatekeeper.toml.in").read_text()
    text = (template.replace("@INTERFACE@", "eth1").replace("@SSH_PORT@", "2222")
            .replace("@SEQUENCE@", '"7000:udp", "8000:tcp", "9000:udp"'))
    assert "@" not in text
    config = tmp_path / "gatekeeper.toml"
    config.write_text(text)
    assert main(["check", "-c", str(config)]) == 0
    assert re.search(r'^interfaces = \["eth1"\]$', text, re.M)
    assert re.search(r'^opens = \["2222:tcp"\]$', text, re.M)
    sshd = (VAGRANT / "provision" / "sshd-gatekeeper.conf.in").read_text()
    assert re.search(r"^Port 22$", sshd, re.M) and re.search(r"^Port @SSH_PORT@$", sshd, re.M)
    gateway = (VAGRANT / "provision" / "gateway.sh").read_text()
    assert "refusing to guard" in gateway  # the default route's interface, loopback


def _validate(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    vagrant = need_tool("vagrant", "Debian 12's vagrant package; scripts/setup.sh installs it")
    home = tmp_path / "vagrant.d"
    home.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "VAGRANT_CWD": str(VAGRANT),
        "VAGRANT_HOME": str(home),                        # nothing in ~/.vagrant.d
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),    # nothing in vagrant/.vagrant
        "VAGRANT_CHECKPOINT_DISABLE": "1",                # no version check over the network
        "VAGRANT_NO_COLOR": "1",
        **(env or {}),
    }
    result = subprocess.run([vagrant, "validate", *args], capture_output=True, text=True,
                            env=full_env, timeout=180, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Vagrantfile validated successfully" in out, out
    return out


def test_vagrant_validate(tmp_path: Path) -> None:
    """Vagrant's own checks of everything but the provider blocks; no provider needed."""
    out = _validate(tmp_path, "--ignore-provider")
    for machine in ("gateway", "client", "attacker"):
        assert f"{machine}: Ignoring provider config" in out
    assert not (VAGRANT / ".vagrant").exists()


def test_vagrant_validate_virtualbox_block(tmp_path: Path) -> None:
    """With the VirtualBox provider made 'usable' by a VBoxManage that answers only
    --version (and fails anything else, so nothing could ever be created), Vagrant also
    validates the virtualbox blocks."""
    stub = tmp_path / "bin" / "VBoxManage"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\n[ "$1" = "--version" ] && { echo 7.0.14r161095; exit 0; }\n'
                    'echo "stub VBoxManage: refusing $*" >&2\nexit 1\n')
    stub.chmod(0o755)
    _validate(tmp_path, env={"VAGRANT_DEFAULT_PROVIDER": "virtualbox",
                             "PATH": f"{stub.parent}{os.pathsep}{os.environ.get('PATH', '')}"})


def test_vagrant_validate_libvirt_block(tmp_path: Path) -> None:
    """With Debian's vagrant-libvirt plugin (no libvirt daemon needed to validate)."""
    vagrant = need_tool("vagrant", "Debian 12's vagrant package; scripts/setup.sh installs it")
    plugins = subprocess.run([vagrant, "plugin", "list"], capture_output=True, text=True,
                             timeout=120, check=False,
                             env={**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
                                  "VAGRANT_CHECKPOINT_DISABLE": "1"}).stdout
    if "vagrant-libvirt" not in plugins:
        if os.environ.get("CI"):
            pytest.fail("vagrant-libvirt must be installed in CI (scripts/setup.sh installs it)")
        pytest.skip("the vagrant-libvirt plugin is not installed (Debian: vagrant-libvirt)")
    _validate(tmp_path, env={"VAGRANT_DEFAULT_PROVIDER": "libvirt"})
