"""The Debian package (issue 19): built with scripts/build-deb.sh, installed with
``apt install ./gatekeeper_*.deb`` into a clean Debian 12 root file system (debootstrap
--variant=minbase from the mirror this machine's apt uses), checked inside it, purged
without a trace, and upgraded from a build with a lower version keeping an edited conffile.

Bounded: every command has a timeout; the two builds take ~2.5 min each, the first
debootstrap ~3 min (then its tarball is cached under CACHE), an install ~1 min.
No service is started in the chroot (policy-rc.d forbids it; there is no systemd running).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatekeeper import __version__
from tests.fixtures.needs import need_root, need_tool

REPO = next(p for p in Path(__file__).resolve().parents if (p / "debian" / "control").is_file())
CACHE = Path("/var/cache/gatekeeper-test")
TARBALL = CACHE / "bookworm-minbase.tar"
SUITE = "bookworm"
CONF = "/etc/gatekeeper/gatekeeper.toml"
VENV = "/opt/venvs/gatekeeper"
BUILD_TIMEOUT = 1200
APT_TIMEOUT = 900
# Paths whose content is bookkeeping of dpkg/apt/logs, or of the chroot's own mounts: not
# files of the package. The shadow tools' backups (/etc/passwd- ...) appear on the first
# adduser and stay, as on any Debian machine.
SCRATCH = ("proc", "sys", "dev", "run", "tmp", "var/lib/dpkg", "var/lib/apt", "var/cache",
           "var/log", "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-")
POLICY = "#!/bin/sh\n# tests/lab/test_deb.py: no service starts in this chroot\nexit 101\n"


def mirror() -> str:
    """The Debian archive this machine's apt uses for bookworm (not the security one)."""
    texts = [p.read_text() for p in (Path("/etc/apt/sources.list"),
                                     *sorted(Path("/etc/apt/sources.list.d").glob("*")))
             if p.is_file()]
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):  # deb822 (.sources)
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
        for m in re.finditer(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", text, re.M):
            return m.group(1)
    pytest.fail(f"/etc/apt/sources.list*: no Debian archive for {SUITE}")


def run(cmd: list[str], timeout: float,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, check=False, env=env)
    assert result.returncode == 0, (f"{' '.join(cmd)}: exit {result.returncode}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def build(src: Path, out: Path) -> Path:
    run(["bash", str(src / "scripts" / "build-deb.sh"), str(out)], BUILD_TIMEOUT)
    debs = sorted(out.glob("gatekeeper_*_amd64.deb"))
    assert len(debs) == 1, debs
    return debs[0]


class Chroot:
    """A fresh copy of the cached minbase root, with proc, sys and dev mounted while in use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounts: list[Path] = []

    def __enter__(self) -> Chroot:
        self.root.mkdir()
        run(["tar", "--numeric-owner", "-xpf", str(TARBALL), "-C", str(self.root)], 300)
        shutil.copy("/etc/resolv.conf", self.root / "etc" / "resolv.conf")
        policy = self.root / "usr" / "sbin" / "policy-rc.d"
        policy.write_text(POLICY)
        policy.chmod(0o755)
        try:
            for args, where in ((["-t", "proc", "proc"], "proc"), (["-t", "sysfs", "sysfs"], "sys"),
                                (["--bind", "/dev"], "dev"), (["--bind", "/dev/pts"], "dev/pts")):
                target = self.root / where
                run(["mount", *args, str(target)], 30)
                self.mounts.append(target)
        except BaseException:
            self.unmount()
            raise
        return self

    def unmount(self) -> None:
        for target in reversed(self.mounts):
            if subprocess.run(["umount", str(target)], check=False, timeout=30).returncode:
                subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)
        self.mounts.clear()

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def sh(self, script: str, timeout: float = 120) -> str:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
               "LANG": "C.UTF-8", "HOME": "/root"}
        return run(["chroot", str(self.root), "sh", "-ec", script], timeout, env=env).stdout

    def apt_install(self, *what: str) -> None:
        self.sh("cd /tmp && apt-get -o DPkg::Lock::Timeout=60 install -y --no-install-recommends "
                + " ".join(what), APT_TIMEOUT)

    def add_deb(self, deb: Path) -> str:
        shutil.copy(deb, self.root / "tmp" / deb.name)
        return f"./{deb.name}"

    def files(self) -> set[str]:
        """Every path of the root but the scratch ones, relative."""
        found: set[str] = set()
        for top, dirs, names in os.walk(self.root):
            rel = os.path.relpath(top, self.root)
            rel = "" if rel == "." else rel + "/"
            dirs[:] = [d for d in dirs if rel + d not in SCRATCH]
            found.update(rel + n for n in (*dirs, *names) if rel + n not in SCRATCH)
        return found


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_root()
    for tool in ("debootstrap", "chroot", "dpkg-deb"):
        need_tool(tool, "tests/lab/test_deb.py builds a package and installs it in a chroot")
    return build(REPO, tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def minbase(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached tarball of a clean Debian 12 minbase root (made on the first run)."""
    need_root()
    need_tool("debootstrap", "tests/lab/test_deb.py installs the package in a clean Debian 12 root")
    if not TARBALL.exists():
        root = tmp_path_factory.mktemp("debootstrap") / "root"
        run(["debootstrap", "--variant=minbase", SUITE, str(root), mirror()], APT_TIMEOUT)
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = TARBALL.with_suffix(".partial")
        run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], 300)
        partial.rename(TARBALL)
        shutil.rmtree(root)
    return TARBALL


@pytest.fixture
def chroot(minbase: Path, tmp_path: Path) -> Iterator[Chroot]:
    with Chroot(tmp_path / "root") as c:
        c.sh("apt-get -o DPkg::Lock::Timeout=60 update", APT_TIMEOUT)
        yield c


def depends(deb: Path) -> list[str]:
    field = run(["dpkg-deb", "-f", str(deb), "Pre-Depends", "Depends"], 30).stdout
    names = re.findall(r"(?:^|,|:)\s*([a-z0-9][a-z0-9+.-]+)", field.replace("\n", " "))
    return sorted(set(names) - {"Depends", "Pre-Depends"})


def test_install_check_purge(deb: Path, chroot: Chroot) -> None:
    assert deb.name == f"gatekeeper_{__version__}_amd64.deb"
    chroot.apt_install(*depends(deb))  # its dependencies first: the purge must not leave
    before = chroot.files()            # anything of gatekeeper's own behind them
    chroot.apt_install(chroot.add_deb(deb))

    assert chroot.sh("gatekeeper --version").strip() == f"gatekeeper {__version__}"
    assert chroot.sh("readlink /usr/bin/gatekeeper").strip() == f"{VENV}/bin/gatekeeper"
    assert "compiled" in chroot.sh(
        f"cd / && {VENV}/bin/python -c 'import gatekeeper.queue._nfq; "
        "from gatekeeper import native; print(native.describe())'")
    assert f"{CONF}: OK: 1 door(s)" in chroot.sh(f"gatekeeper check -c {CONF}")
    # the shipped example keeps SSH open, whatever an admin starts it with
    assert "--dports 22 -j RETURN" in chroot.sh(f"gatekeeper rules -c {CONF}")

    unit = "/lib/systemd/system/gatekeeper.service"
    text = chroot.sh(f"cat {unit}")
    assert f"ExecStartPre={VENV}/bin/gatekeeper check -c {CONF}" in text
    assert f"ExecStart={VENV}/bin/gatekeeper run -c {CONF}" in text
    assert "@GATEKEEPER@" not in text
    # --man=no: the chroot has no man-db to look up the unit's Documentation= pages
    chroot.sh(f"systemd-analyze verify --man=no {unit}")
    assert chroot.sh("systemctl is-enabled gatekeeper.service || true").strip() == "disabled"

    user = chroot.sh("getent passwd gatekeeper").strip().split(":")
    assert int(user[2]) < 1000 and user[6] in ("/usr/sbin/nologin", "/bin/false"), user
    assert chroot.sh(f"stat -c '%a %U:%G' /etc/gatekeeper {CONF} /var/lib/gatekeeper").split("\n")[:3] == [
        "750 root:gatekeeper", "640 root:gatekeeper", "700 gatekeeper:gatekeeper"]
    assert CONF in chroot.sh("dpkg-query -W -f '${Conffiles}' gatekeeper")
    assert "nfnetlink_queue" in chroot.sh("cat /etc/modules-load.d/gatekeeper.conf")
    chroot.sh("test -s /usr/share/gatekeeper/grafana/gatekeeper.json"
              " && test -s /usr/share/gatekeeper/prometheus/alerts.yml"
              " && grep -q failregex /usr/share/gatekeeper/fail2ban/filter.d/gatekeeper-spa.conf"
              " && grep -q '^filter' /usr/share/gatekeeper/fail2ban/jail.d/gatekeeper-spa.conf"
              " && zcat /usr/share/man/man8/gatekeeper.8.gz | grep -q '^.SS check'"
              " && zcat /usr/share/man/man5/gatekeeper.toml.5.gz | grep -q sequence_timeout")

    chroot.sh("apt-get purge -y gatekeeper", APT_TIMEOUT)
    assert chroot.files() ^ before == set()
    assert chroot.sh("getent passwd gatekeeper || getent group gatekeeper || true") == ""


def bumped(src: Path, version: str) -> None:
    """``src`` (a copy of the repo) at ``version``: __version__ and a changelog entry."""
    init = src / "gatekeeper" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{__version__}"', f'__version__ = "{version}"'))
    log = src / "debian" / "changelog"
    log.write_text(f"gatekeeper ({version}) {SUITE}; urgency=medium\n\n  * Test build.\n\n"
                   " -- gatekeeper maintainers <gatekeeper@example.org>  Mon, 07 Dec 2026 03:00:00 +0000\n\n"
                   + log.read_text())


def test_upgrade_keeps_an_edited_conffile(deb: Path, chroot: Chroot, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], 60).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    newer = f"{__version__}+up1"
    bumped(src, newer)
    (tmp_path / "out").mkdir()
    deb2 = build(src, tmp_path / "out")

    chroot.apt_install(chroot.add_deb(deb))
    edited = chroot.sh(f"sed -i 's/^public = .*/public = [\"22:tcp\", \"2222:tcp\"]/' {CONF} && cat {CONF}")
    assert '"2222:tcp"' in edited
    chroot.apt_install(chroot.add_deb(deb2))  # stdin closed: a conffile prompt would fail it
    assert chroot.sh("gatekeeper --version").strip() == f"gatekeeper {newer}"
    assert chroot.sh(f"cat {CONF}") == edited
    assert chroot.sh(f"stat -c '%a %U:%G' {CONF}").strip() == "640 root:gatekeeper"
