import pytest

from internal.core.hostpaths import allowed_prefix_problem, host_mount_problem, normalise

ALLOWED = ["/srv/kat", "/mnt/media/"]


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/.",
        "//",
        "/etc",
        "/etc/",
        "//etc",
        "/srv/kat/../../etc/passwd",
        "/root",
        "/proc/1/root",
        "/sys/kernel",
        "/dev/sda",
        "/boot",
        "/var/lib/kat",
        "/var/lib/kat/pki",
        "/var",
        "/var/lib",
    ],
)
def test_never_allowed_whatever_the_list_says(path: str) -> None:
    assert host_mount_problem(path, [*ALLOWED, "/var", "/"]) != ""


def test_only_under_an_allowed_prefix() -> None:
    assert host_mount_problem("/srv/kat/media", ALLOWED) == ""
    assert host_mount_problem("/srv/kat", ALLOWED) == ""
    assert host_mount_problem("/mnt/media/x/../y", ALLOWED) == ""
    assert "not under any" in host_mount_problem("/srv/katx", ALLOWED)
    assert "not under any" in host_mount_problem("/srv/kat/../other", ALLOWED)
    assert "hostMount is off" in host_mount_problem("/srv/kat", [])


def test_the_node_data_dir_counts() -> None:
    assert host_mount_problem("/srv/kat/data", ["/srv"], data_dir="/srv/kat") != ""


def test_allowed_prefixes_are_checked() -> None:
    assert allowed_prefix_problem("/srv/kat") == ""
    for bad in ("/", "/.", "relative", "/etc/x", "/var/lib", "/var/lib/kat/volumes"):
        assert allowed_prefix_problem(bad) != "", bad
    assert normalise("//a//b/./c/") == "/a/b/c"
