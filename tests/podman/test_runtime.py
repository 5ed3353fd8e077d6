"""kat_agent/node/podman/runtime.py and kat_agent/node/podman/service.py against real Podman.

A private Podman service (own --root/--runroot/--tmpdir under a temp dir, own socket)
serves the whole module; the busybox image is imported into it from the rootfs tarball
of scripts/build-images.sh. Every container is removed, the service stopped and its
storage deleted at the end, also when a test fails. One test runs rootless Podman as a
freshly made workload user and removes that user again.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from api.v1alpha1 import kat_pb2
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind, PodmanServiceError
from kat_agent.node.podman.mounts import ClusterStorageVolume, HostPathVolume, MountSpec
from kat_agent.node.podman.runtime import Runtime
from kat_agent.node.podman.service import PodmanService, PodmanStorage, ping
from kat_agent.node.podman.spec import (
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_WORKLOAD,
    InstanceSpec,
)
from kat_agent.node.podman.users import (
    MAX_USERNAME,
    WorkloadUser,
    ensure_workload_user,
    remove_workload_user,
    workload_username,
)
from tests.helpers import (
    BUSYBOX_IMAGE,
    BUSYBOX_TARBALL,
    TEST_CONTAINERS_CONF,
    podman_unavailable,
)

T = TypeVar("T")

IMAGE = BUSYBOX_IMAGE
TARBALL = BUSYBOX_TARBALL
IMPORT_CHANGES = [
    'CMD ["/bin/sh"]',
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
]
CONTAINERS_CONF = TEST_CONTAINERS_CONF


def _unavailable() -> str | None:
    return podman_unavailable()


needs_podman = pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")


async def poll(
    fn: Callable[[], Awaitable[T]], *, within: float = 10.0, what: str = "condition"
) -> T:
    """Await fn() until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {within:g}s (last: {last!r})")


def _rm_containers(root_args: list[str]) -> None:
    """Remove every container of the private storage (via the CLI: works even if the
    service is gone)."""
    out = subprocess.run(
        ["podman", *root_args, "ps", "-aq"], capture_output=True, text=True, check=False
    ).stdout.split()
    if out:
        subprocess.run(
            ["podman", *root_args, "rm", "-f", "-t", "0", *out], capture_output=True, check=False
        )


def _unmount_under(base: Path) -> None:
    """Podman's overlay driver keeps its directory bind-mounted (<root>/overlay) when a
    CLI call or a killed service leaves it so; unmount whatever is under `base`."""
    prefix = f"{base}/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


class Env:
    """The module's private Podman: an event loop, the service and a Runtime."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.loop = asyncio.new_event_loop()
        self.storage = PodmanStorage(
            root=base / "podman" / "root",
            runroot=base / "podman" / "runroot",
            tmpdir=base / "podman" / "tmp",
            network_config_dir=base / "podman" / "networks",
        )
        self.conf = base / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)
        self.service = PodmanService(
            base / "run" / "podman.sock", storage=self.storage, containers_conf=self.conf
        )
        self.volumes = base / "volumes"
        # hostMounts of the tests live under base (cluster.kat's hostMountAllowedPaths)
        self.allowed = [str(base)]
        self.rt = Runtime(
            self.service.socket_path, volume_base_path=self.volumes, host_mount_allowed=self.allowed
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def new_runtime(self) -> Runtime:
        return Runtime(
            self.service.socket_path, volume_base_path=self.volumes, host_mount_allowed=self.allowed
        )


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    # Short (Podman wants a runroot of at most 50 characters) and reachable by the
    # rootless test's user (pytest's own tmp dir is 0700 root).
    base = Path(tempfile.mkdtemp(prefix="kat-rt-"))
    base.chmod(0o755)
    e = Env(base)
    try:
        e.run(e.service.start())
        e.run(e.service.wait_ready(30))
        e.run(e.rt.import_image(TARBALL, IMAGE, IMPORT_CHANGES))
        yield e
    finally:
        _rm_containers(e.storage.global_args())
        e.run(e.rt.close())
        e.run(e.service.stop())
        e.loop.close()
        _unmount_under(e.base)
        shutil.rmtree(e.base, ignore_errors=True)


@pytest.fixture
def created(env: Env) -> Iterator[list[str]]:
    """Container ids a test made; removed (forced) after it, also when it fails."""
    ids: list[str] = []
    yield ids
    for cid in ids:
        env.run(env.rt.remove(cid, force=True))


def _spec(name: str, args: tuple[str, ...], **kw: Any) -> InstanceSpec:
    return InstanceSpec(
        namespace="test",
        workload=name,
        instance_id=secrets.token_hex(4),
        generation=kw.pop("generation", 1),
        image=IMAGE,
        args=args,
        **kw,
    )


async def _start(rt: Runtime, created: list[str], spec: InstanceSpec) -> str:
    cid = await rt.create_and_start(spec)
    created.append(cid)
    return cid


async def _collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in it])


# ---------------------------------------------------------------- no Podman needed


def test_workload_username_short_and_long(monkeypatch: pytest.MonkeyPatch) -> None:
    # KAT's own naming (the suite runs with a prefix of its own, tests/conftest.py)
    monkeypatch.delenv("KAT_WORKLOAD_USER_PREFIX")
    assert workload_username("default", "web") == "kat_wl_default_web"
    long_a = workload_username("a-very-long-namespace", "and-a-long-workload-name")
    long_b = workload_username("a-very-long-namespace", "and-a-long-workload-namf")
    assert len(long_a) == MAX_USERNAME and len(long_b) == MAX_USERNAME
    assert long_a != long_b
    assert long_a == workload_username("a-very-long-namespace", "and-a-long-workload-name")
    assert long_a.startswith("kat_wl_a-very-long-n") and "__" in long_a


def test_storage_from_env_and_for_user() -> None:
    s = PodmanStorage.from_env(
        {"KAT_PODMAN_ROOT": "/d/podman/root", "KAT_PODMAN_TMPDIR": "/d/podman/tmp"}
    )
    assert s.global_args() == ["--root", "/d/podman/root", "--tmpdir", "/d/podman/tmp"]
    u = s.for_user(WorkloadUser(1234, 1234, "kat_wl_ns_w"))
    assert u.root == Path("/d/podman/users/kat_wl_ns_w/root")
    assert u.tmpdir == Path("/d/podman/users/kat_wl_ns_w/tmp")
    assert u.runroot is None
    assert PodmanStorage.from_env({}).global_args() == []
    deep = PodmanStorage(runroot=Path("/var/lib/kat/nodes/node-with-a-long-name/podman/runroot"))
    with pytest.raises(PodmanServiceError, match="at most 50 characters"):
        deep.check()
    short = deep.for_user(WorkloadUser(1234, 1234, "kat_wl_some_namespace_some_workload"))
    assert short.runroot is not None and str(short.runroot).startswith("/run/user/1234/kat-")
    short.check()


def test_instance_spec_from_proto() -> None:
    inst = kat_pb2.Instance(id="abc123", workload="web", namespace="prod", generation=7)
    spec = kat_pb2.WorkloadSpec(
        source=kat_pb2.WorkloadSource(image=IMAGE),
        container=kat_pb2.Container(
            command=["/bin/sh", "-c"],
            args=["echo hi"],
            env=[kat_pb2.EnvVar(name="A", value="1")],
            volume_mounts=[kat_pb2.VolumeMount(name="data", mount_path="/data", read_only=True)],
            resources=kat_pb2.ResourceRequirements(
                limits=kat_pb2.ResourceList(cpu="250m", memory="64Mi")
            ),
        ),
        volumes=[
            kat_pb2.Volume(name="data", simple_cluster_storage=kat_pb2.SimpleClusterStorage()),
            kat_pb2.Volume(
                name="host",
                host_mount=kat_pb2.HostMount(
                    host_path="/srv/x", ensure_type=kat_pb2.HostMount.DIRECTORY_OR_CREATE
                ),
            ),
        ],
    )
    s = InstanceSpec.from_proto(inst, spec, network="katnet", static_ip="10.100.0.5")
    assert s.container_name == "kat_prod_web_abc123"
    assert (s.command, s.args, s.env) == (("/bin/sh", "-c"), ("echo hi",), (("A", "1"),))
    assert (s.cpu_millis, s.memory_bytes) == (250, 64 * 1024 * 1024)
    assert s.volumes == {
        "data": ClusterStorageVolume(),
        "host": HostPathVolume(Path("/srv/x"), "DIRECTORY_OR_CREATE"),
    }
    assert s.mounts == (MountSpec("data", "/data", "", True),)
    assert (s.network, s.static_ip) == ("katnet", "10.100.0.5")
    assert s.labels()[LABEL_GENERATION] == "7"
    spec.container.resources.limits.memory = "64MB"
    with pytest.raises(ContainerRuntimeError) as err:
        InstanceSpec.from_proto(inst, spec)
    assert err.value.kind is ErrorKind.INVALID and "64MB" in str(err.value)
    spec.source.image = ""
    with pytest.raises(ContainerRuntimeError, match="no image"):
        InstanceSpec.from_proto(inst, spec)


# ---------------------------------------------------------------- root Podman


@needs_podman
def test_create_inspect_list_and_adopt(env: Env, created: list[str]) -> None:
    async def body() -> None:
        spec = _spec(
            "adopt",
            ("sleep", "3600"),
            generation=4,
            env=(("GREETING", "hello"), ("EMPTY", "")),
            memory_bytes=64 * 1024 * 1024,
            cpu_millis=500,
        )
        await env.rt.ensure_image(IMAGE)  # present: no pull (no registry here)
        cid = await _start(env.rt, created, spec)
        doc = await env.rt.inspect(cid)
        assert doc["Name"] == spec.container_name
        assert doc["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert doc["HostConfig"]["CpuQuota"] == 50_000
        assert doc["HostConfig"]["CpuPeriod"] == 100_000
        assert {"GREETING=hello", "EMPTY="} <= set(doc["Config"]["Env"])
        assert doc["Config"]["Cmd"] == ["sleep", "3600"]
        assert doc["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")

        mine = [c for c in await env.rt.list_managed() if c.container_id == cid]
        assert len(mine) == 1
        c = mine[0]
        assert c.running and c.exit_code is None and c.started_at is not None
        assert (c.namespace, c.workload, c.instance_id, c.generation) == (
            "test",
            "adopt",
            spec.instance_id,
            4,
        )
        assert c.labels[LABEL_MANAGED] == "true"
        assert c.labels[LABEL_WORKLOAD] == "adopt" and c.labels[LABEL_NAMESPACE] == "test"
        assert c.labels[LABEL_INSTANCE] == spec.instance_id

        # An agent restart: a new Runtime finds the same, still running container.
        async with env.new_runtime() as fresh:
            again = {o.instance_id: o for o in await fresh.list_managed()}
        adopted = again[spec.instance_id]
        assert adopted.container_id == cid and adopted.running
        assert adopted.started_at == c.started_at and adopted.restart_count == 0

    env.run(body())


@needs_podman
def test_stop_grace_term_then_kill(env: Env, created: list[str]) -> None:
    async def body() -> None:
        trap = "trap 'exit 0' TERM; while true; do sleep 0.05; done"
        polite = await _start(env.rt, created, _spec("polite", ("sh", "-c", trap)))
        # PID 1 without a handler: SIGTERM is ignored, only SIGKILL ends it.
        stubborn = await _start(env.rt, created, _spec("stubborn", ("sleep", "3600")))

        async def timed_stop(cid: str, grace: float) -> float:
            t0 = time.monotonic()
            await env.rt.stop(cid, grace)
            return time.monotonic() - t0

        t_polite, t_stubborn = await asyncio.gather(timed_stop(polite, 10), timed_stop(stubborn, 1))
        assert t_polite < 5, "a container that handles SIGTERM stops well within its grace"
        assert 1.0 <= t_stubborn < 6, "SIGKILL comes after the grace, not before"
        p, s = await env.rt.observe(polite), await env.rt.observe(stubborn)
        assert (p.state, p.exit_code) == ("exited", 0)
        assert (s.state, s.exit_code) == ("exited", 137)
        await env.rt.stop(polite, 1)  # stopping a stopped container is fine

    env.run(body())


CHATTY = "i=0; while [ $i -lt 20000 ]; do echo line-$i-" + "x" * 40 + "; i=$((i+1)); done"


@needs_podman
def test_container_log_is_capped(env: Env, created: list[str]) -> None:
    """containerLogMaxSize: a container writing far more than the cap leaves a log
    file of at most about the cap (Podman truncates k8s-file logs at the size)."""

    async def body() -> None:
        cap = 64 * 1024
        env.rt.log_max_bytes = cap
        try:
            cid = await _start(
                env.rt,
                created,
                _spec(
                    "chatty",
                    (
                        "sh",
                        "-c",
                        CHATTY,
                    ),
                ),
            )
        finally:
            env.rt.log_max_bytes = 0
        await env.rt.wait(cid)
        doc = await env.rt.inspect(cid)
        path = Path(doc["HostConfig"]["LogConfig"]["Path"])
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        assert size <= cap * 2, size  # without the cap: about 1 MB

    env.run(body())


def test_exit_code_and_wait(env: Env, created: list[str]) -> None:
    async def body() -> None:
        cid = await _start(env.rt, created, _spec("exit3", ("sh", "-c", "exit 3")))
        assert await env.rt.wait(cid) == 3
        o = await env.rt.observe(cid)
        assert (o.state, o.exit_code, o.running) == ("exited", 3, False)
        # (Podman may put FinishedAt a millisecond before StartedAt for such a short run.)
        assert o.finished_at is not None and o.started_at is not None
        assert await env.rt.exit_code(cid) == 3

    env.run(body())


@needs_podman
def test_logs_tail_and_follow(env: Env, created: list[str]) -> None:
    async def body() -> None:
        five = "for i in 1 2 3 4 5; do echo line$i; done"
        cid = await _start(env.rt, created, _spec("logs", ("sh", "-c", five)))
        assert await env.rt.wait(cid) == 0
        assert await _collect(env.rt.logs(cid)) == b"".join(
            f"line{i}\n".encode() for i in range(1, 6)
        )
        assert await _collect(env.rt.logs(cid, tail=2)) == b"line4\nline5\n"

        # follow: the container writes, waits for a file we create, writes again, exits.
        script = "echo before; while [ ! -e /data/go ]; do sleep 0.05; done; echo after >&2"
        spec = _spec(
            "follow",
            ("sh", "-c", script),
            volumes={"data": ClusterStorageVolume()},
            mounts=(MountSpec("data", "/data"),),
        )
        cid = await _start(env.rt, created, spec)
        seen: list[bytes] = []
        stream = env.rt.logs(cid, follow=True)
        async with asyncio.timeout(20):
            async for chunk in stream:
                seen.append(chunk)
                if chunk == b"before\n":
                    (env.volumes / "test" / "follow" / "data" / "go").touch()
        assert seen == [b"before\n", b"after\n"]  # and the stream ended with the container

        # stopping early closes the stream (no thread or connection left behind)
        sleeper = await _start(env.rt, created, _spec("follow2", ("sh", "-c", "echo x; sleep 60")))
        it = env.rt.logs(sleeper, follow=True)
        async with asyncio.timeout(10):
            assert await anext(it) == b"x\n"
        await it.aclose()

    env.run(body())


@needs_podman
def test_log_frames_keep_stderr_apart_with_timestamps_and_since(
    env: Env, created: list[str]
) -> None:
    async def body() -> None:
        script = "echo out1; echo err1 >&2; echo out2"
        cid = await _start(env.rt, created, _spec("frames", ("sh", "-c", script)))
        assert await env.rt.wait(cid) == 0
        frames = [f async for f in env.rt.log_frames(cid)]
        assert [(s, d) for s, d in frames if s == 1] == [(1, b"out1\n"), (1, b"out2\n")]
        assert [(s, d) for s, d in frames if s == 2] == [(2, b"err1\n")]
        stamped = [d async for _, d in env.rt.log_frames(cid, timestamps=True)]
        assert all(re.match(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", d) for d in stamped), stamped
        assert [d async for _, d in env.rt.log_frames(cid, since=time.time() + 60)] == []

    env.run(body())


@needs_podman
def test_exec_stream_with_a_tty_takes_its_size(env: Env, created: list[str]) -> None:
    async def body() -> None:
        cid = await _start(env.rt, created, _spec("tty", ("sleep", "3600")))
        sizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        sizes.put_nowait((30, 100))
        out = bytearray()

        async def collect(_stream: int, data: bytes) -> None:
            out.extend(data)

        # The size is set just after the session starts: the shell looks until it sees it.
        script = (
            'for i in $(seq 100); do s=$(stty size); [ "$s" = "30 100" ] && break; '
            'sleep 0.05; done; echo "size $s"'
        )
        async with asyncio.timeout(30):
            code = await env.rt.exec_stream(
                cid, ["sh", "-c", script], collect, tty=True, sizes=sizes
            )
        assert code == 0 and b"size 30 100" in out, bytes(out)

    env.run(body())


@needs_podman
def test_exec_health_checks(env: Env, created: list[str]) -> None:
    async def body() -> None:
        cid = await _start(env.rt, created, _spec("exec", ("sleep", "3600")))
        assert await env.rt.exec(cid, ["sh", "-c", "echo ok"], timeout=5) == (0, b"ok\n")
        code, out = await env.rt.exec(cid, ["sh", "-c", "echo bad >&2; exit 4"], timeout=5)
        assert (code, out) == (4, b"bad\n")
        code, _ = await env.rt.exec(cid, ["/no/such/binary"], timeout=5)
        assert code != 0

        t0 = time.monotonic()
        with pytest.raises(ContainerRuntimeError) as err:
            await env.rt.exec(cid, ["sleep", "30"], timeout=0.5)
        assert err.value.kind is ErrorKind.TIMEOUT and "0.5s" in str(err.value)
        assert time.monotonic() - t0 < 5

        async def sleep_gone() -> bool:
            _, ps = await env.rt.exec(cid, ["ps", "-o", "args"], timeout=5)
            return b"sleep 30" not in ps

        await poll(sleep_gone, within=5, what="timed-out exec process killed")

        await env.rt.stop(cid, 0)
        with pytest.raises(ContainerRuntimeError) as err:
            await env.rt.exec(cid, ["true"], timeout=5)
        assert err.value.kind is ErrorKind.NOT_RUNNING

    env.run(body())


@needs_podman
def test_errors_are_mapped(env: Env, created: list[str]) -> None:
    async def body() -> None:
        with pytest.raises(ContainerRuntimeError) as err:
            await env.rt.ensure_image("localhost/kat-no-such-image:1")
        assert err.value.kind is ErrorKind.IMAGE_NOT_FOUND
        assert "localhost/kat-no-such-image:1" in str(err.value)

        missing = InstanceSpec("test", "noimg", "x1", 1, "localhost/kat-no-such-image:1")
        with pytest.raises(ContainerRuntimeError) as err:
            await env.rt.create_and_start(missing)
        assert err.value.kind is ErrorKind.IMAGE_NOT_FOUND

        spec = _spec("twice", ("sleep", "3600"))
        await _start(env.rt, created, spec)
        with pytest.raises(ContainerRuntimeError) as err:
            await env.rt.create_and_start(spec)
        assert err.value.kind is ErrorKind.NAME_CONFLICT
        assert spec.container_name in str(err.value)

        with pytest.raises(ContainerRuntimeError) as err:
            await env.rt.inspect("kat-no-such-container")
        assert err.value.kind is ErrorKind.NOT_FOUND
        with pytest.raises(ContainerRuntimeError) as err:
            await env.rt.stop("kat-no-such-container", 1)
        assert err.value.kind is ErrorKind.NOT_FOUND
        await env.rt.remove("kat-no-such-container")  # already gone: fine

        names = {c.name for c in await env.rt.list_managed()}
        assert missing.container_name not in names

        async with Runtime(env.base / "nowhere.sock") as dead:
            assert not await dead.ping()
            with pytest.raises(ContainerRuntimeError) as err:
                await dead.stop("x", 1)
            assert err.value.kind is ErrorKind.UNAVAILABLE

    env.run(body())


@needs_podman
def test_volumes_cluster_storage_and_host_mounts(env: Env, created: list[str]) -> None:
    host = env.base / "host"
    host.mkdir()
    (host / "existing-dir").mkdir()
    (host / "existing-file").write_text("from host\n")
    sock_path = host / "app.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))

    async def body() -> None:
        vols = {
            "data": ClusterStorageVolume(),
            "made": HostPathVolume(host / "new" / "dir", "DIRECTORY_OR_CREATE"),
            "dir": HostPathVolume(host / "existing-dir", "DIRECTORY"),
            "newfile": HostPathVolume(host / "new-file", "FILE_OR_CREATE"),
            "file": HostPathVolume(host / "existing-file", "FILE"),
            "sock": HostPathVolume(sock_path, "SOCKET"),
        }
        mounts = (
            MountSpec("data", "/data"),
            MountSpec("data", "/sub", sub_path="nested/deeper"),
            MountSpec("data", "/ro", read_only=True),
            MountSpec("made", "/made"),
            MountSpec("dir", "/dir", read_only=True),
            MountSpec("newfile", "/etc/newfile"),
            MountSpec("file", "/etc/existing", read_only=True),
            MountSpec("sock", "/run/app.sock"),
        )
        spec = _spec("vols", ("sleep", "3600"), volumes=vols, mounts=mounts)
        cid = await _start(env.rt, created, spec)
        data = env.volumes / "test" / "vols" / "data"
        assert (host / "new" / "dir").is_dir() and (host / "new-file").is_file()
        assert (data / "nested" / "deeper").is_dir()

        async def sh(script: str) -> tuple[int, bytes]:
            return await env.rt.exec(cid, ["sh", "-c", script], timeout=5)

        assert (await sh("echo hi > /data/out && echo sub > /sub/f"))[0] == 0
        assert (data / "out").read_text() == "hi\n"
        assert (data / "nested" / "deeper" / "f").read_text() == "sub\n"
        assert (await sh("cat /ro/out"))[1] == b"hi\n"
        assert (await sh("touch /ro/x"))[0] != 0, "readOnly mount is writable"
        assert (await sh("touch /dir/x"))[0] != 0, "readOnly mount is writable"
        assert (await sh("cat /etc/existing"))[1] == b"from host\n"
        assert (await sh("echo w > /etc/newfile"))[0] == 0
        assert (host / "new-file").read_text() == "w\n"
        assert (await sh("echo m > /made/m"))[0] == 0
        assert (await sh("test -S /run/app.sock"))[0] == 0

    try:
        env.run(body())
    finally:
        listener.close()


@needs_podman
def test_volume_errors(env: Env) -> None:
    host = env.base / "host-errors"
    host.mkdir()
    (host / "a-file").write_text("x")
    (host / "a-dir").mkdir()
    (env.volumes / "test" / "esc" / "data").mkdir(parents=True)
    (env.volumes / "test" / "esc" / "data" / "link").symlink_to("/etc")
    (host / "to-etc").symlink_to("/etc")
    (host / "to-outside").symlink_to(env.base.parent)

    cases: list[tuple[dict[str, Any], tuple[MountSpec, ...], str]] = [
        ({"v": HostPathVolume(host / "nope", "DIRECTORY")}, (), "not an existing directory"),
        ({"v": HostPathVolume(host / "a-file", "DIRECTORY")}, (), "not an existing directory"),
        ({"v": HostPathVolume(host / "a-file", "DIRECTORY_OR_CREATE")}, (), "not a directory"),
        ({"v": HostPathVolume(host / "nope", "FILE")}, (), "not an existing regular file"),
        ({"v": HostPathVolume(host / "a-dir", "FILE")}, (), "not an existing regular file"),
        ({"v": HostPathVolume(host / "a-dir", "FILE_OR_CREATE")}, (), "not a regular file"),
        ({"v": HostPathVolume(host / "no" / "f", "FILE_OR_CREATE")}, (), "does not exist"),
        ({"v": HostPathVolume(host / "a-file", "SOCKET")}, (), "not an existing unix socket"),
        ({"v": HostPathVolume(host / "nope")}, (), "does not exist"),
        ({"v": HostPathVolume(Path("relative/path"), "DIRECTORY")}, (), "must be absolute"),
        # only under cluster.kat's hostMountAllowedPaths, never the system or data dirs
        ({"v": HostPathVolume(Path("/."), "DIRECTORY")}, (), "/ is never allowed"),
        ({"v": HostPathVolume(Path("/etc"), "DIRECTORY")}, (), "no workload may mount"),
        ({"v": HostPathVolume(Path("/etc/kat-x"), "FILE_OR_CREATE")}, (), "no workload may mount"),
        ({"v": HostPathVolume(Path("/proc/1/root"), "")}, (), "no workload may mount"),
        ({"v": HostPathVolume(Path("/var/lib/kat"), "")}, (), "no workload may mount"),
        ({"v": HostPathVolume(host / "to-etc", "DIRECTORY")}, (), "no workload may mount"),
        (
            {"v": HostPathVolume(host / "to-outside" / "kat-outside-x", "DIRECTORY_OR_CREATE")},
            (),
            "not under",
        ),
        ({}, (MountSpec("v", "/x"),), "no volume named 'v'"),
        ({"v": ClusterStorageVolume()}, (MountSpec("v", "x"),), "mountPath must be absolute"),
        (
            {"v": ClusterStorageVolume()},
            (MountSpec("v", "/x", sub_path="../other"),),
            "without '..'",
        ),
        (
            {"data": ClusterStorageVolume()},
            (MountSpec("data", "/x", sub_path="link"),),
            "leads out of its volume",
        ),
    ]

    async def body() -> None:
        for volumes, mounts, message in cases:
            spec = InstanceSpec(
                "test", "esc", secrets.token_hex(4), 1, IMAGE, volumes=volumes, mounts=mounts
            )
            with pytest.raises(ContainerRuntimeError) as err:
                await env.rt.create_and_start(spec)
            assert err.value.kind is ErrorKind.BAD_MOUNT, (volumes, mounts)
            assert message in str(err.value), str(err.value)
        assert not (host / "nope").exists()
        assert not [c for c in await env.rt.list_managed() if c.workload == "esc"]

    env.run(body())
    assert not Path("/etc/kat-x").exists() and not (env.base.parent / "kat-outside-x").exists()


@needs_podman
def test_service_restarts_and_containers_survive(env: Env, created: list[str]) -> None:
    async def body() -> None:
        cid = await _start(env.rt, created, _spec("survivor", ("sleep", "3600")))
        before = env.service.restarts
        pid = env.service.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        async def restarted() -> bool:
            return env.service.restarts > before and await env.rt.ping()

        await poll(restarted, within=15, what="Podman service restarted")
        assert env.service.pid != pid
        assert (await env.rt.observe(cid)).running

    env.run(body())


# ---------------------------------------------------------------- rootless


def _podman_ps_names(args: list[str]) -> set[str]:
    res = subprocess.run(
        ["podman", *args, "ps", "-a", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return set(res.stdout.split())


def _process_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])


def _subid_lines(user: str) -> list[str]:
    return [
        line
        for f in ("/etc/subuid", "/etc/subgid")
        for line in Path(f).read_text().splitlines()
        if line.split(":")[0] == user
    ]


@needs_podman
def test_rootless_workload_user(env: Env) -> None:
    ns, name = "kattest", f"rl{secrets.token_hex(3)}"
    # Not under pytest's tmp dir: that is 0700 root, and the user needs to reach its home.
    home_base = Path(tempfile.mkdtemp(prefix="kat-test-homes-"))
    home_base.chmod(0o755)
    user: WorkloadUser | None = None
    service: PodmanService | None = None
    try:
        user = ensure_workload_user(ns, name, home_base=home_base)
        assert user.username == workload_username(ns, name)
        assert pwd.getpwnam(user.username).pw_uid == user.uid
        assert ensure_workload_user(ns, name, home_base=home_base) == user  # idempotent
        lines = _subid_lines(user.username)
        assert len(lines) == 2, lines  # one subuid and one subgid range, not duplicated
        assert user.runtime_dir.stat().st_uid == user.uid
        assert user.runtime_dir.stat().st_mode & 0o777 == 0o700

        # Its own storage next to the module's (as the dev cluster does per node).
        storage = env.storage.for_user(user)
        service = PodmanService(
            user.runtime_dir / "podman" / "podman.sock",
            user=user,
            storage=storage,
            containers_conf=env.conf,
        )
        env.run(_rootless_body(env, service, user, home_base / "volumes"))
    finally:
        if service is not None:
            env.run(service.stop())
            for _, path in service.storage.items():
                shutil.rmtree(path, ignore_errors=True)
                assert not path.exists()
        if user is not None:
            assert remove_workload_user(ns, name)
            with pytest.raises(KeyError):
                pwd.getpwnam(user.username)
            assert _subid_lines(user.username) == []
            assert not user.runtime_dir.exists()
            assert not (home_base / user.username).exists()
            assert not remove_workload_user(ns, name)  # gone already
        shutil.rmtree(home_base, ignore_errors=True)


async def _rootless_body(env: Env, svc: PodmanService, user: WorkloadUser, volumes: Path) -> None:
    await svc.start()
    await svc.wait_ready(30)
    assert svc.storage.root is not None and svc.storage.root.stat().st_uid == user.uid
    async with Runtime(svc.socket_path, volume_base_path=volumes, owner=(user.uid, user.gid)) as rt:
        await rt.import_image(TARBALL, IMAGE, IMPORT_CHANGES)
        spec = _spec(
            "rootless",
            ("sh", "-c", "echo rootless > /data/who; sleep 3600"),
            volumes={"data": ClusterStorageVolume()},
            mounts=(MountSpec("data", "/data"),),
        )
        cid = (await rt.create(spec)).container_id
        try:
            await rt.start(cid)
            assert [c.container_id for c in await rt.list_managed()] == [cid]
            # Not visible to root: neither to root's default Podman nor to the module's.
            assert spec.container_name not in _podman_ps_names([])
            assert spec.container_name not in _podman_ps_names(env.storage.global_args())
            assert cid not in {c.container_id for c in await env.rt.list_managed()}
            # Its processes run as the workload user; its volume belongs to the user.
            pid = (await rt.inspect(cid))["State"]["Pid"]
            assert _process_uid(pid) == user.uid
            data = volumes / "test" / "rootless" / "data"
            assert data.stat().st_uid == user.uid
            assert data.stat().st_mode & 0o777 == 0o700  # no other workload user reads it

            async def written() -> bool:
                return (data / "who").exists()

            await poll(written, within=10, what="rootless container wrote its volume")
            assert (data / "who").stat().st_uid == user.uid  # container root = the user

            # The service dies: it is restarted, the container runs on.
            restarts, pid_before = svc.restarts, svc.pid
            assert pid_before is not None
            os.kill(pid_before, signal.SIGKILL)

            async def restarted() -> bool:
                return svc.restarts > restarts and await rt.ping()

            await poll(restarted, within=15, what="rootless service restarted")

            # The agent crashes: its service dies with it and leaves its socket file.
            # A new agent's service clears it and adopts the container.
            await svc.stop()
            await _crash_leaving_socket(svc)
            await svc.start()
            await svc.wait_ready(30)
            (again,) = await rt.list_managed()
            assert again.container_id == cid and again.running
        finally:
            await rt.remove(cid, force=True)


async def _crash_leaving_socket(svc: PodmanService) -> None:
    """Run the service's command as a stray process and SIGKILL it, like a service
    whose agent crashed (PR_SET_PDEATHSIG): its socket file stays, nothing answers."""
    user = svc.user
    assert user is not None
    stray = await asyncio.create_subprocess_exec(
        *svc.command(),
        env=svc.environment(),
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        process_group=0,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await poll(lambda: ping(svc.socket_path), within=30, what="stray service answers")
    finally:
        os.killpg(stray.pid, signal.SIGKILL)
        await stray.wait()
    assert svc.socket_path.exists()

    async def silent() -> bool:
        return not await ping(svc.socket_path)

    await poll(silent, within=10, what="stray service gone")
