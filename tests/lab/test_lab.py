"""The real daemon, real iptables/ipset/NFQUEUE, in network namespaces.

gateway 203.0.113.1 / 2001:db8:1::1 guards eth0; client .10, other host .20;
server 198.51.100.10 behind the gateway.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gatekeeper.lab.netns import CLIENT4, GW4, GW6, OTHER4, SERVER4, Lab
from tests.fixtures.configs import ROOT, SSH, config
from tests.fixtures.needs import need_tool
from tests.lab.support import PROBE, is_open, knock, probe, snapshot


def private(text: str, where: Path) -> str:
    """The config with a control socket of its own (never the system's /run/gatekeeper)."""
    return text.replace("[gatekeeper]\n", f'[gatekeeper]\ncontrol = "{where}/control.sock"\n', 1)


def test_knock_opens_for_the_knocker_only(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config())
    assert not is_open(lab, "client", GW4), "protected port shut before the knock"
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)
    assert not is_open(lab, "other", GW4), "the other host did not knock"
    daemon.wait_for(r"grant door=ssh address=203\.0\.113\.10 ")
    assert is_open(lab, "other", GW4, 80) is False  # public port returns to the admin's rules
    # (nothing listens on 80 in the gateway: the RST proves the packet reached the stack)
    result = probe(lab, "other", "connect", GW4, 80)
    assert "refused" in result.get("error", ""), result


def test_wrong_order_and_late_sequences_fail(lab: Lab, start_daemon: Any) -> None:
    start_daemon(config())
    knock(lab, "client", GW4, SSH[1], SSH[0], SSH[2])
    assert not is_open(lab, "client", GW4)
    knock(lab, "client", GW4, *SSH, delay_ms=1600)  # 3.2 s from first to last > 3 s
    assert not is_open(lab, "client", GW4)
    knock(lab, "client", GW4, SSH[0], "7001:udp", SSH[1], SSH[2])
    assert not is_open(lab, "client", GW4)
    knock(lab, "client", GW4, *SSH, delay_ms=300)
    assert is_open(lab, "client", GW4)


def test_expiry_shuts_new_connections_but_not_established_ones(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config(open_for=2))
    knock(lab, "client", GW4, *SSH)
    holder = lab.popen("client", [sys.executable, PROBE, "hold", GW4, "22"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdin is not None and holder.stdout is not None
    assert json.loads(holder.stdout.readline())["ok"]
    daemon.wait_for(r"revoke door=ssh address=203\.0\.113\.10 cause=expired", timeout=6)
    time.sleep(0.3)
    assert not is_open(lab, "client", GW4), "a new connection after expiry is refused"
    holder.stdin.write("still there?\n")
    holder.stdin.flush()
    assert json.loads(holder.stdout.readline())["ok"], "the established connection carries on"
    lab.stop(holder)


def test_first_syn_is_accepted_straight_after_the_last_knock(lab: Lab, start_daemon: Any) -> None:
    """100 knocks from 100 source addresses, each followed at once by connect() with a
    timeout shorter than the SYN retransmit: success means the first SYN got through."""
    for i in range(100):
        lab.add_address("client", f"203.0.113.{100 + i}")
    start_daemon(config())
    results = probe(lab, "client", "trials", GW4, 22, 100, "203.0.113.100", ",".join(SSH))
    ok = [r for r in results if r["ok"]]
    connect_ms = sorted(r["ms"] for r in ok)
    print(f"\nfirst-SYN connects: {len(ok)}/100; connect median {statistics.median(connect_ms):.2f} ms, "
          f"max {connect_ms[-1]:.2f} ms")
    assert len(ok) >= 99, [r for r in results if not r["ok"]][:3]


def test_stock_knock_client_from_knockd(lab: Lab, start_daemon: Any) -> None:
    need_tool("knock", "the client in Debian's knockd package")
    daemon = start_daemon(config())
    lab.run("client", ["knock", GW4, *SSH])
    assert is_open(lab, "client", GW4)
    daemon.wait_for("grant door=ssh")
    # (with -u, Debian's knock sends every port as udp, even one written :tcp)
    lab.run("client", ["knock", GW4, "4001", "4002:udp", "4003"])
    assert is_open(lab, "client", SERVER4, 3389)


def test_forward_door_for_a_server_behind_the_gateway(lab: Lab, start_daemon: Any) -> None:
    start_daemon(config())
    assert not is_open(lab, "client", SERVER4, 3389)
    knock(lab, "client", SERVER4, "4001", "4002:udp", "4003")  # knocks to the host itself
    assert is_open(lab, "client", SERVER4, 3389)
    assert not is_open(lab, "other", SERVER4, 3389)
    assert not is_open(lab, "client", GW4, 3389), "the grant is for the host, not the gateway"


def test_a_gateway_door_never_opens_the_same_port_on_a_host_behind_it(
        lab: Lab, start_daemon: Any) -> None:
    """The ssh door has no host: knocking it opens port 22 of the gateway, and port 22 of
    198.51.100.10 (the rdp door's host, whose new packets are all verdicted) stays shut."""
    lab.serve_tcp("server", 22)
    start_daemon(config())
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4, 22)
    assert not is_open(lab, "client", SERVER4, 22), "a gateway door's grant reached a host behind it"
    knock(lab, "client", GW4, "4001", "4002:udp", "4003")
    assert is_open(lab, "client", SERVER4, 3389)
    assert not is_open(lab, "client", SERVER4, 22)


def test_knocks_to_the_gateway_open_the_host_behind_it(lab: Lab, start_daemon: Any) -> None:
    start_daemon(config())
    knock(lab, "other", GW4, "4001", "4002:udp", "4003")
    assert is_open(lab, "other", SERVER4, 3389)


def test_ipv6(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config())
    assert not is_open(lab, "client", GW6)
    knock(lab, "client", GW6, *SSH)
    assert is_open(lab, "client", GW6)
    assert not is_open(lab, "other", GW6)
    assert not is_open(lab, "client", GW4), "a grant is for the address that knocked"
    daemon.wait_for(r"grant door=ssh address=2001:db8:1::10 ")


def test_icmp_echo_knocks(lab: Lab, start_daemon: Any) -> None:
    start_daemon(config())
    knock(lab, "client", GW4, "64:icmp", "128:icmp")
    assert is_open(lab, "client", GW4, 8080)
    knock(lab, "client", GW6, "64:icmp", "128:icmp")
    assert is_open(lab, "client", GW6, 8080)


def test_close_sequence_revokes(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config())
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4)
    knock(lab, "client", GW4, "9000:tcp", "8000:udp", "7000:tcp")
    daemon.wait_for("revoke door=ssh address=203.0.113.10 cause=closed")
    assert not is_open(lab, "client", GW4)


def test_start_and_stop_commands(lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    log = tmp_path / "commands.log"
    extra = (f'start_command = ["/bin/sh", "-c", "echo start %IP% >> {log}"]\n'
             f'stop_command = "/bin/sh -c \'echo stop %IP% >> {log}\'"\n'
             'command_timeout = 5\n')
    start_daemon(config(open_for=1, **{"close_sequence": extra + "close_sequence"}))
    knock(lab, "client", GW4, *SSH)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and "stop" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    assert log.read_text().splitlines() == ["start 203.0.113.10", "stop 203.0.113.10"]


def test_failing_command_does_not_crash_the_daemon(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config(**{"close_sequence": 'start_command = "/nonexistent/x %IP%"\n'
                                                      "close_sequence"}))
    knock(lab, "client", GW4, *SSH)
    daemon.wait_for("start_command /nonexistent/x: cannot run")
    assert daemon.proc.poll() is None
    assert is_open(lab, "client", GW4)


def test_sigterm_removes_everything_and_keeps_admin_rules(lab: Lab, start_daemon: Any) -> None:
    before = snapshot(lab)
    assert "--dport 2222 -j ACCEPT" in before, "the admin's rules are in place"
    daemon = start_daemon(config())
    during = snapshot(lab)
    assert "GATEKEEPER-IN" in during and "gatekeeper-in4" in during
    admin = [ln for ln in before.splitlines() if ln.startswith("-A")]
    assert [ln for ln in during.splitlines() if ln in admin] == admin, "admin rules keep their order"
    knock(lab, "client", GW4, *SSH)
    assert daemon.stop() == 0
    assert snapshot(lab) == before


def test_sigint_removes_everything_too(lab: Lab, start_daemon: Any) -> None:
    before = snapshot(lab)
    daemon = start_daemon(config())
    assert daemon.stop(2) == 0
    assert snapshot(lab) == before


def test_fail_closed_after_a_crash_and_clean_restart(lab: Lab, start_daemon: Any) -> None:
    """kill -9 leaves the queue rule without a reader: packets are dropped, not accepted.
    A grant already made lives on in the kernel set until its own timeout, never longer."""
    before = snapshot(lab)
    daemon = start_daemon(config(open_for=3))
    knock(lab, "client", GW4, *SSH)
    daemon.stop(9)
    assert is_open(lab, "client", GW4), "the grant outlives the crash..."
    assert not is_open(lab, "other", GW4), "...but nobody else gets in (no queue bypass)"
    time.sleep(3.2)
    assert not is_open(lab, "client", GW4), "...and only until its own timeout"
    again = start_daemon(config())
    again.wait_for("replaced the rules left by an earlier gatekeeper run")
    assert again.stop() == 0
    assert snapshot(lab) == before


def failing_restore(tmp_path: Path, tool: str = "iptables-restore") -> dict[str, str]:
    """An environment whose ``tool`` rejects every ruleset that queues (as a kernel without
    NFQUEUE would) and passes anything else (a removal) to the real one."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    real = shutil.which(tool)
    (fake / tool).write_text(
        "#!/bin/sh\n"
        'input=$(cat)\n'
        f'case "$input" in *NFQUEUE*) echo "{tool}: line 9 failed: '
        "Couldn't load target \\`NFQUEUE':No such file or directory\" >&2; exit 2;; esac\n"
        f'printf "%s\\n" "$input" | exec {real} "$@"\n'
    )
    (fake / tool).chmod(0o755)
    return {"PATH": f"{fake}:{os.environ['PATH']}"}


def test_no_connection_gets_in_through_a_crash_a_failed_restart_and_a_restart(
        lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    """A SYN to the protected port every 1.5 ms through kill -9 of the daemon, a restart whose
    install fails, and a good restart: the rules of the crashed run stay until the new ones
    replace them in one step, and a failed install leaves them in force."""
    before = snapshot(lab)
    daemon = start_daemon(config())
    flood = lab.popen("other", [sys.executable, PROBE, "syns", GW4, "22", "7", "1.5"],
                      stdout=subprocess.PIPE)
    time.sleep(0.5)
    daemon.stop(9)
    time.sleep(0.3)
    path = tmp_path / "again.toml"
    path.write_text(private(config(), path.parent))
    argv = [sys.executable, "-m", "gatekeeper", "run", "-c", str(path)]
    line = run_expect_error(lab, argv, env=failing_restore(tmp_path))
    assert "iptables-restore rejected the ruleset" in line
    assert "gatekeeper's rules stay installed, the earlier run's" in line
    again = start_daemon(config())
    again.wait_for("replaced the rules left by an earlier gatekeeper run")
    out, _ = flood.communicate(timeout=30)
    result = json.loads(out)
    assert result["made"] > 2000, result
    assert result["connected"] == 0, f"{result['connected']} connections got in: {result}"
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4), "the restarted daemon guards and grants"
    assert again.stop() == 0
    assert snapshot(lab) == before


def test_restart_adopts_running_grants(lab: Lab, start_daemon: Any) -> None:
    daemon = start_daemon(config(open_for=20))
    knock(lab, "client", GW4, *SSH)
    daemon.stop(9)
    again = start_daemon(config(open_for=20))
    again.wait_for("adopted 1 running grant")
    assert is_open(lab, "client", GW4)


# -- bad input: one line, exit 2, nothing installed -------------------------------------

def run_expect_error(lab: Lab, argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(lab.argv("gw", argv), capture_output=True, text=True, timeout=30,
                            env={**os.environ, **(env or {})}, check=False)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_config_leaves_nothing_installed(lab: Lab, tmp_path: Path) -> None:
    before = snapshot(lab)
    path = tmp_path / "bad.toml"
    bad = config().replace('opens = ["22:tcp"]', 'opens = ["22:tcp"]\nopen_four = 3')
    path.write_text(private(bad, path.parent))
    line = run_expect_error(lab, [sys.executable, "-m", "gatekeeper", "run", "-c", str(path)])
    assert str(path) in line and "open_four" in line and "unknown key" in line
    assert snapshot(lab) == before


def test_queue_in_use_is_refused_and_the_running_daemon_is_untouched(
    lab: Lab, start_daemon: Any, tmp_path: Path
) -> None:
    start_daemon(config())
    during = snapshot(lab)
    path = tmp_path / "second.toml"
    path.write_text(private(config(), path.parent))
    line = run_expect_error(lab, [sys.executable, "-m", "gatekeeper", "run", "-c", str(path)])
    assert "NFQUEUE 0" in line and "queue" in line
    assert snapshot(lab) == during
    knock(lab, "client", GW4, *SSH)
    assert is_open(lab, "client", GW4), "the first daemon still works"


def test_missing_privilege(lab: Lab) -> None:
    before = snapshot(lab)
    with tempfile.TemporaryDirectory() as readable:  # pytest's tmp_path is root-only
        os.chmod(readable, 0o755)
        path = Path(readable) / "ok.toml"
        path.write_text(private(config(), path.parent))
        path.chmod(0o644)
        line = run_expect_error(lab, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      sys.executable, "-m", "gatekeeper", "run", "-c", str(path)],
                                env={"PYTHONPATH": str(ROOT)})
    assert "CAP_NET_ADMIN" in line
    assert snapshot(lab) == before


def test_missing_kernel_feature_rolls_back_the_other_family(lab: Lab, tmp_path: Path) -> None:
    """The kernel here has NFQUEUE, so a restore tool that reports it missing stands in for
    a kernel without it: IPv4 went in, IPv6 failed, and everything must come out again."""
    before = snapshot(lab)
    path = tmp_path / "ok.toml"
    path.write_text(private(config(), path.parent))
    line = run_expect_error(lab, [sys.executable, "-m", "gatekeeper", "run", "-c", str(path)],
                            env=failing_restore(tmp_path, "ip6tables-restore"))
    assert "ip6tables-restore rejected the ruleset" in line and "NFQUEUE" in line
    assert snapshot(lab) == before


def test_check_and_rules_commands(lab: Lab, tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(private(config(), path.parent))
    # in the gateway, which has the eth0 the config guards (check refuses an absent one)
    check = lab.run("gw", [sys.executable, "-m", "gatekeeper", "check", "-c", str(path)], check=False)
    assert check.returncode == 0 and "3 door(s)" in check.stdout
    rules = subprocess.run([sys.executable, "-m", "gatekeeper", "rules", "-c", str(path), "--family", "4"],
                           capture_output=True, text=True, check=False)
    assert rules.returncode == 0
    one = subprocess.run([sys.executable, "-m", "gatekeeper", "rules", "-c", str(path), "--family", "4"],
                         capture_output=True, text=True, check=False)
    assert "-A GATEKEEPER-IN -m mark --mark 0x474b0001 -j NFQUEUE --queue-num 1" in rules.stdout
    assert "queue-bypass" not in rules.stdout + one.stdout
    assert rules.stdout == one.stdout, "the same config always renders the same rules"


def test_rules_printed_are_the_rules_installed(lab: Lab, start_daemon: Any, tmp_path: Path) -> None:
    daemon = start_daemon(config())
    printed = subprocess.run([sys.executable, "-m", "gatekeeper", "rules", "-c", str(daemon.config),
                              "--family", "4"], capture_output=True, text=True, check=True).stdout
    assert "-j HMARK" in printed
    installed = lab.run("gw", ["iptables-save", "-t", "filter"]).stdout
    for line in printed.splitlines():
        if line.startswith("-A "):
            assert line in installed, line
    assert OTHER4 and CLIENT4  # addresses used above come from the lab module


def test_refuses_to_start_when_an_admin_rule_bypasses_its_queue(lab: Lab, tmp_path: Path) -> None:
    """An admin's own NFQUEUE rule to our queue with --queue-bypass would accept packets
    whenever no worker listens: the daemon must refuse, leaving nothing installed."""
    rule = ["INPUT", "-p", "udp", "--dport", "5353", "-j", "NFQUEUE", "--queue-num", "1",
            "--queue-bypass"]
    lab.run("gw", ["iptables", "-A", *rule])
    try:
        before = snapshot(lab)
        path = tmp_path / "ok.toml"
        path.write_text(private(config(), path.parent))
        line = run_expect_error(lab, [sys.executable, "-m", "gatekeeper", "run", "-c", str(path)])
        assert "refusing to run" in line and "--queue-bypass" in line
        assert snapshot(lab) == before
    finally:
        lab.run("gw", ["iptables", "-D", *rule])
