"""Renaming a busy user in the account files (kat_agent/node/podman/accounts.py): only the
user's own lines (and its name in member lists) change, every other byte stays."""

from __future__ import annotations

import os
from pathlib import Path

from kat_agent.node.podman.accounts import (
    rename_account,
    rename_first_field,
    rename_group,
    rename_passwd,
)

HOME = "/var/lib/kat-workloads/kat_wl__spare0a1b2c3d"
PASSWD = f"""root:x:0:0:root:/root:/bin/bash
kat_wl__spare0a1b2c3d:x:994:994:kat spare 6bac3f7285:{HOME}:/usr/sbin/nologin
kat_wl__spare0a1b2c3dx:x:993:993:kat spare 6bac3f7285:/var/lib/kat-workloads/x:/bin/false
"""
GROUP = """root:x:0:
kat_wl__spare0a1b2c3d:x:994:
audio:x:29:pulse,kat_wl__spare0a1b2c3d
"""
GSHADOW = """root:*::
kat_wl__spare0a1b2c3d:!::
audio:*:kat_wl__spare0a1b2c3d:pulse
"""
SUBUID = "other:100000:65536\nkat_wl__spare0a1b2c3d:165536:65536\n"
OLD, NEW = "kat_wl__spare0a1b2c3d", "kat_wl_default_web"
GECOS = "kat workload default/web"


def test_passwd_renames_only_that_user_and_sets_its_comment() -> None:
    out = rename_passwd(PASSWD, OLD, NEW, GECOS).splitlines()
    assert out[0] == "root:x:0:0:root:/root:/bin/bash"
    # uid, gid, home and shell stay: the running service and the storage are unaffected
    assert out[1] == f"{NEW}:x:994:994:{GECOS}:{HOME}:/usr/sbin/nologin"
    assert out[2].startswith("kat_wl__spare0a1b2c3dx:")  # a longer name is another user


def test_groups_rename_the_group_and_memberships() -> None:
    group = rename_group(GROUP, OLD, NEW).splitlines()
    assert group == ["root:x:0:", f"{NEW}:x:994:", f"audio:x:29:pulse,{NEW}"]
    gshadow = rename_group(GSHADOW, OLD, NEW).splitlines()
    assert gshadow == ["root:*::", f"{NEW}:!::", f"audio:*:{NEW}:pulse"]


def test_subordinate_ids_keep_their_range() -> None:
    assert rename_first_field(SUBUID, OLD, NEW) == f"other:100000:65536\n{NEW}:165536:65536\n"


def test_unknown_user_changes_nothing() -> None:
    for text in (PASSWD, GROUP, SUBUID):
        assert rename_first_field(text, "nobody_here", NEW) == text
        assert rename_group(text, "nobody_here", NEW) == text
    assert rename_passwd(PASSWD, "nobody_here", NEW, GECOS) == PASSWD


def test_rename_account_keeps_each_files_mode(tmp_path: Path) -> None:
    files = {
        "passwd": (PASSWD, 0o644),
        "shadow": (f"root:*:1::::::\n{OLD}:!:20000::::::\n", 0o640),
        "group": (GROUP, 0o644),
        "gshadow": (GSHADOW, 0o640),
        "subuid": (SUBUID, 0o644),
        "subgid": (SUBUID, 0o644),
    }
    for name, (text, mode) in files.items():
        (tmp_path / name).write_text(text)
        os.chmod(tmp_path / name, mode)
    rename_account(OLD, NEW, GECOS, etc=tmp_path)
    for name, (_, mode) in files.items():
        text = (tmp_path / name).read_text()
        fields = [f for line in text.splitlines() for f in line.split(":")[:4]]
        assert OLD not in fields and not any(OLD in f.split(",") for f in fields), name
        assert NEW in text, name
        assert (tmp_path / name).stat().st_mode & 0o7777 == mode, name
    assert f"{NEW}:!:20000::::::" in (tmp_path / "shadow").read_text()
