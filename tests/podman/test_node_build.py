"""Images built from git on the node (kat_agent/node/build.py) with REAL git and REAL
Podman, driven through the node runtime and a fake leader as in test_node_runtime.py
(whose fixtures are reused: the module's private Podman storage with busybox, a node
harness, assignments)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from kat_agent.node.build import build_tag
from tests.podman.test_node_runtime import (  # noqa: F401 - fixtures
    IMAGE,
    NS,
    P,
    _unavailable,
    assignment,
    certs,
    cluster,
    env,
    running,
)

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or _unavailable() is not None,
    reason="git is not installed" if shutil.which("git") is None else (_unavailable() or ""),
)

DOCKERFILE = f"""\
FROM {IMAGE}
ARG GREETING=none
RUN echo built > /built && echo $GREETING > /greeting
CMD ["sleep", "3600"]
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """A local repository with the Dockerfile in app/ and its commit."""
    r = tmp_path / "repo"
    (r / "app").mkdir(parents=True)
    (r / "app" / "Dockerfile").write_text(DOCKERFILE)
    _git(r, "init", "-q", "-b", "main")
    _git(r, "add", ".")
    _git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return r, _git(r, "rev-parse", "HEAD")


def git_assignment(iid: str, name: str, repository: str) -> kat_pb2.Assignment:
    a = assignment(iid, name, [], image="")
    a.bundle.workload.spec.source.ClearField("image")
    a.bundle.workload.spec.source.git.repository = repository
    a.bundle.workload.spec.source.git.branch = "main"
    b = a.bundle.build_definition
    b.metadata.name, b.metadata.namespace = name, NS
    b.spec.build_context = "app"
    b.spec.dockerfile_path = "Dockerfile"
    b.spec.build_args["GREETING"] = "hello"
    return a


async def test_build_from_git(cluster, repo: tuple[Path, str]) -> None:  # noqa: F811
    path, commit = repo
    async with cluster() as (leader, node):
        await node.start()
        seen: list[int] = []
        a1 = git_assignment("b1", "gb", f"file://{path}")
        await leader.publish(a1)

        def note(i: kat_pb2.Instance) -> bool:
            if not seen or seen[-1] != i.phase:
                seen.append(i.phase)
            return running(i)

        inst = await leader.wait_for("b1", note, within=60, what="b1 running")
        assert P.BUILDING in seen, [P.Phase.Name(p) for p in seen]
        assert seen.index(P.BUILDING) < seen.index(P.RUNNING)
        tag = build_tag(NS, "gb", commit)
        data = await node.inspect(inst.container_id)
        assert data["ImageName"].endswith(tag), data["ImageName"]
        rt = node.rt.pool.root.runtime
        code, out = await rt.exec(inst.container_id, ["cat", "/built", "/greeting"], 10)
        assert code == 0 and out.split() == [b"built", b"hello"], (code, out)
        assert node.rt.builder.builds == 1

        # A second instance of the same workload: no second build.
        await leader.publish(a1, git_assignment("b2", "gb", f"file://{path}"))
        await leader.wait_for("b2", running, within=30, what="b2 running")
        assert node.rt.builder.builds == 1
        assert not list(node.rt.builder.work_dir.iterdir())  # clones removed

        # A repository that does not exist: FAILED with the step in the message.
        bad = git_assignment("b3", "gbad", f"file://{path}-missing")
        await leader.publish(a1, bad)
        failed = await leader.wait_for("b3", lambda i: i.phase == P.FAILED, within=30)
        assert failed.message.startswith("build failed: git "), failed.message
        assert "missing" in failed.message and "\n" not in failed.message


async def test_refuses_option_like_repository_and_escapes(cluster, repo) -> None:  # noqa: F811
    path, _ = repo
    async with cluster() as (leader, node):
        await node.start()
        a = git_assignment("o1", "gopt", "--upload-pack=touch /tmp/x")
        esc = git_assignment("o2", "gesc", f"file://{path}")
        esc.bundle.build_definition.spec.build_context = "../.."
        await leader.publish(a, esc)
        f1 = await leader.wait_for("o1", lambda i: i.phase == P.FAILED, within=30)
        assert "must not start with '-'" in f1.message, f1.message
        f2 = await leader.wait_for("o2", lambda i: i.phase == P.FAILED, within=30)
        assert "buildContext" in f2.message, f2.message
        assert node.rt.builder.builds == 0
