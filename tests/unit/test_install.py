"""`kat-agent install|uninstall`: the systemd unit (checked with systemd-analyze verify
where it exists) and what uninstall removes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kat_agent import install


def test_unit_runs_the_command_line_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    unit = install.render_unit(
        ["init", "--config", "cluster.kat", "--data-dir=dd", "--no-rootless"]
    )
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        f"ExecStart={sys.executable} -m kat_agent.cli init --config {tmp_path}/cluster.kat "
        f"--data-dir={tmp_path}/dd --no-rootless"
    )
    assert "KillMode=process" in unit and "Restart=on-failure" in unit
    with pytest.raises(install.InstallError):
        install.render_unit(["backup"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    done = install.install(["join", "--leader", "10.0.0.1:9115", "--token", "KAT1.x"], tmp_path)
    path = tmp_path / install.UNIT_NAME
    assert str(path) in done
    assert path.stat().st_mode & 0o777 == 0o600  # it holds a join token
    res = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr


def test_uninstall_removes_the_unit_and_with_purge_the_data_dir(tmp_path: Path) -> None:
    units, data = tmp_path / "units", tmp_path / "data"
    install.install(["init", "--data-dir", str(data)], units)
    (data / "agent").mkdir(parents=True)
    done = install.uninstall(data, purge=False, unit_dir=units, users=[], host=False)
    assert not (units / install.UNIT_NAME).exists() and data.exists() and len(done) == 1
    install.uninstall(data, purge=True, unit_dir=units, users=[], host=False)
    assert not data.exists()


def test_only_kat_interfaces_are_removed() -> None:
    from kat_agent.host_cleanup import kat_interfaces

    names = ["lo", "eth0", "kat0", "kat1", "katc0ffee00ab", "kv0123456789a", "kvx", "kat0wg"]
    names += ["docker0", "kat_guard", "podman0", "kv0123456789ab", "katc0ffee00abc"]
    assert kat_interfaces(names) == ["kat0", "katc0ffee00ab", "kv0123456789a"]
