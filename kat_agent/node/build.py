"""Images built from git on the node that runs the workload (SPEC section 2.5).

`Builder.image_for(bundle)` returns a local image reference for a workload whose
`spec.source.git` is set, building it when needed:

1. resolve the commit: a full 40-hex `commit` as given; else `git ls-remote` of the branch,
   tag or HEAD (no clone needed to find out whether the image is already there);
2. the image is `kat-build/<namespace>/<workload>:<commit[:12]>` in root's Podman storage
   (the node's image cache; rootless workload users get it copied from there like a
   pulled image, see podmans.py). Present: done;
3. `source.cacheImage` set: pull `<cacheImage>:<commit[:12]>`; found: tag it, done;
4. `git clone` into <data-dir>/agent/builds/<random> (`--depth 1 --branch` for a branch
   or tag without a commit; else a full clone and `git checkout <commit>`),
   `git rev-parse HEAD`, `podman build` (buildContext inside the repository, dockerfilePath
   relative to it, buildArgs, targetStage, platform, `cache.registryPath` as
   --cache-from/--cache-to), push to the cache image when set, remove the clone.

Building uses the `podman` CLI (not the API's build endpoint, which wants the context as
a tar stream) with the same global storage flags, CONTAINERS_CONF and network namespace
as root's Podman service, so the result lands in the storage that service serves.
git and podman run as subprocesses without a shell; their output is kept for the error
message. One build at a time per workload (an asyncio.Lock per namespace/workload), so
several instances of one workload on the node build once.

A failure raises BuildError (a ContainerRuntimeError) with a one-line message naming
the step, e.g. "build failed: git clone file:///x: repository '/x' does not exist".
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from api.v1alpha1 import kat_pb2
from internal.observability import metrics
from kat_agent.node.podman.errors import ContainerRuntimeError, ErrorKind
from kat_agent.node.podman.services import NodeSettings

log = logging.getLogger(__name__)

IMAGE_PREFIX = "kat-build"
SHORT = 12
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
COMMAND_TIMEOUT = 3600.0  # one git or podman step


class BuildError(ContainerRuntimeError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.OTHER, f"build failed: {message}")


def build_tag(namespace: str, workload: str, commit: str) -> str:
    return f"{IMAGE_PREFIX}/{namespace}/{workload}:{commit[:SHORT]}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "no output"
    line = lines[-1]
    for prefix in ("fatal: ", "error: ", "Error: "):
        if line.startswith(prefix):
            line = line[len(prefix) :]
    return line[:300]


def _inside(base: Path, rel: str, what: str) -> Path:
    """`rel` under `base`, refusing absolute paths and `..`/symlink escapes."""
    if rel.startswith("/") or ".." in Path(rel).parts:
        raise BuildError(f"{what} {rel!r} must be a relative path inside the repository")
    path = (base / rel).resolve()
    root = base.resolve()
    if path != root and root not in path.parents:
        raise BuildError(f"{what} {rel!r} leads outside the repository")
    return path


class Builder:
    """Builds the git-sourced images of one node into root's Podman storage."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.work_dir = settings.state_dir / "builds"
        self.builds = 0  # `podman build` runs (tests check that a second instance reuses)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # ------------------------------------------------------------ subprocesses

    def _podman_cmd(self, *args: str) -> list[str]:
        s = self.settings
        enter = ["nsenter", f"--net={s.netns}"] if s.netns is not None else []
        return [*enter, "podman", *s.storage.global_args(), *args]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GIT_TERMINAL_PROMPT"] = "0"  # never wait for credentials
        if self.settings.containers_conf is not None:
            env["CONTAINERS_CONF"] = str(self.settings.containers_conf)
        return env

    async def _run(self, step: str, cmd: list[str], cwd: Path | None = None) -> str:
        """Run `cmd`; its stdout, or BuildError("<step>: <last line of output>")."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=cwd,
                env=self._env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise BuildError(f"{step}: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        except BaseException as exc:  # cancelled or timed out: do not leave it running
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if isinstance(exc, TimeoutError):
                raise BuildError(f"{step}: no result within {COMMAND_TIMEOUT:.0f}s") from exc
            raise
        if proc.returncode != 0:
            text = err.decode(errors="replace") or out.decode(errors="replace")
            raise BuildError(f"{step}: {_last_line(text)}")
        return out.decode(errors="replace")

    async def _image_exists(self, ref: str) -> bool:
        proc = await asyncio.create_subprocess_exec(
            *self._podman_cmd("image", "exists", ref),
            env=self._env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await proc.wait() == 0

    # ------------------------------------------------------------ the build

    async def image_for(self, bundle: kat_pb2.Bundle) -> str:
        """The local image of a git-sourced workload, built (or pulled from the cache
        image) when this node does not have it yet."""
        w = bundle.workload
        ns, name = w.metadata.namespace, w.metadata.name
        git = w.spec.source.git
        repo = git.repository
        if not repo:
            raise BuildError("spec.source.git.repository is empty")
        if repo.startswith("-"):
            raise BuildError(f"repository {repo!r} must not start with '-'")
        lock = self._locks.setdefault((ns, name), asyncio.Lock())
        async with lock:
            commit = await self._resolve(git)
            if commit:
                tag = build_tag(ns, name, commit)
                if await self._image_exists(tag) or await self._from_cache(w, commit, tag):
                    return tag
            started, result = time.perf_counter(), "failure"
            try:
                tag = await self._clone_and_build(bundle, commit)
                result = "success"
                return tag
            finally:
                metrics.BUILD_SECONDS.labels(result).observe(time.perf_counter() - started)

    async def _resolve(self, git: kat_pb2.GitSource) -> str:
        """The commit the source names, without cloning; "" when only a clone can tell
        (an abbreviated commit)."""
        if git.commit:
            return git.commit.lower() if FULL_SHA.match(git.commit.lower()) else ""
        if git.branch:
            refs, what = [f"refs/heads/{git.branch}"], f"branch {git.branch}"
        elif git.tag:
            refs, what = [f"refs/tags/{git.tag}", f"refs/tags/{git.tag}^{{}}"], f"tag {git.tag}"
        else:
            refs, what = ["HEAD"], "HEAD"
        out = await self._run(
            f"git ls-remote {git.repository}", ["git", "ls-remote", "--", git.repository, *refs]
        )
        found: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            found[ref.strip()] = sha.strip()
        for ref in reversed(refs):  # a peeled tag (^{}) names the commit
            if ref in found:
                return found[ref]
        raise BuildError(f"git ls-remote {git.repository}: {what} not found")

    async def _from_cache(self, w: kat_pb2.Workload, commit: str, tag: str) -> bool:
        cache = w.spec.source.cache_image
        if not cache:
            return False
        ref = f"{cache}:{commit[:SHORT]}"
        try:
            await self._run(f"podman pull {ref}", self._podman_cmd("pull", "-q", ref))
            await self._run(f"podman tag {ref}", self._podman_cmd("tag", ref, tag))
        except BuildError as exc:
            log.info("cache image %s not usable (%s); building", ref, exc)
            return False
        log.info("using cache image %s for %s", ref, tag)
        return True

    async def _clone_and_build(self, bundle: kat_pb2.Bundle, expected: str) -> str:
        w = bundle.workload
        ns, name = w.metadata.namespace, w.metadata.name
        git = w.spec.source.git
        repo = git.repository
        await asyncio.to_thread(self.work_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        clone = self.work_dir / f"{ns}-{name}-{secrets.token_hex(4)}"
        try:
            cmd = ["git", "clone", "--quiet"]
            ref = git.branch or git.tag
            if ref:
                cmd += ["--branch", ref]
                if not git.commit:
                    cmd += ["--depth", "1"]
            await self._run(f"git clone {repo}", [*cmd, "--", repo, str(clone)])
            if git.commit:
                await self._run(
                    f"git checkout {git.commit}",
                    ["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", git.commit],
                    cwd=clone,
                )
            commit = (
                await self._run("git rev-parse HEAD", ["git", "rev-parse", "HEAD"], cwd=clone)
            ).strip()
            if expected and commit != expected:
                log.info("%s/%s: %s moved to %s meanwhile", ns, name, expected[:SHORT], commit)
            tag = build_tag(ns, name, commit)
            if await self._image_exists(tag) or await self._from_cache(w, commit, tag):
                return tag
            await self._build(bundle, clone, tag)
            cache = w.spec.source.cache_image
            if cache:
                ref = f"{cache}:{commit[:SHORT]}"
                await self._run(f"podman tag {tag} {ref}", self._podman_cmd("tag", tag, ref))
                await self._run(f"podman push {ref}", self._podman_cmd("push", "-q", ref))
                log.info("pushed %s to the cache image %s", tag, ref)
            return tag
        finally:
            await asyncio.to_thread(shutil.rmtree, clone, True)

    async def _build(self, bundle: kat_pb2.Bundle, clone: Path, tag: str) -> None:
        spec = bundle.build_definition.spec
        context = _inside(clone, spec.build_context or ".", "buildContext")
        dockerfile = _inside(context, spec.dockerfile_path or "Dockerfile", "dockerfilePath")
        if not dockerfile.is_file():
            raise BuildError(f"dockerfilePath {spec.dockerfile_path or 'Dockerfile'!r} not found")
        args = ["build", "-q", "--layers", "-f", str(dockerfile), "-t", tag]
        for key in sorted(spec.build_args):
            args += ["--build-arg", f"{key}={spec.build_args[key]}"]
        if spec.target_stage:
            args += ["--target", spec.target_stage]
        if spec.platform:
            args += ["--platform", spec.platform]
        if spec.cache.registry_path:
            args += ["--cache-from", spec.cache.registry_path]
            args += ["--cache-to", spec.cache.registry_path]
        args.append(str(context))
        self.builds += 1
        log.info("building %s from %s", tag, bundle.workload.spec.source.git.repository)
        await self._run(f"podman build {tag}", self._podman_cmd(*args))
        log.info("built %s", tag)
