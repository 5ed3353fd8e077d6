"""Assignment deltas: what a node rebuilds from the full snapshot and the deltas after it is
exactly the leader's full snapshot, and unchanged records are not rebuilt (issue 14)."""

from __future__ import annotations

import asyncio

import pytest

from api.v1alpha1 import kat_pb2
from internal.core.assignments import DeltaOutOfSync, apply_update, assignments_by_node
from kat_agent.leader.assignments import HISTORY, AssignmentBook

P = kat_pb2.Instance


def rec(id_: str, node: str = "n1", restarts: int = 0) -> P:
    return P(
        id=id_, workload="web", namespace="default", node=node, generation=1,
        phase=P.RUNNING, restart_count=restarts, resource_version=3,
    )  # fmt: skip


def peer(name: str) -> kat_pb2.Peer:
    return kat_pb2.Peer(node_name=name, advertise_address="127.0.0.1")


def test_a_stream_of_deltas_rebuilds_the_full_snapshot_at_every_step() -> None:
    async def run() -> None:
        book = AssignmentBook()
        await book.reset()
        bundle = kat_pb2.Bundle()
        cache: dict = {}  # type: ignore[type-arg]
        steps = [
            ([rec("a"), rec("b"), rec("c", "n2")], [peer("n1")]),
            ([rec("a"), rec("b", restarts=1), rec("d")], [peer("n1")]),  # change, add, remove
            ([rec("a"), rec("d")], [peer("n1"), peer("n2")]),  # peers change too
            ([], [peer("n1"), peer("n2")]),  # everything goes
        ]
        node_view: kat_pb2.AssignmentSet | None = None
        last = -1
        kinds = []
        for records, peers in steps:
            await book.publish(assignments_by_node(records, lambda _: bundle, cache), peers)
            update = book.update("n1", last, deltas=True)
            assert update is not None
            kinds.append(update.delta)
            node_view = apply_update(node_view, update)
            last = update.revision
            assert node_view == book.snapshot("n1")
            assert book.update("n1", last, deltas=True) is None  # up to date
        assert kinds == [False, True, True, True]  # a full snapshot first, then deltas
        assert node_view is not None and not node_view.assignments
        assert [p.node_name for p in node_view.peers] == ["n1", "n2"]

    asyncio.run(run())


def test_unchanged_records_keep_their_assignment_objects_and_revision() -> None:
    async def run() -> None:
        book = AssignmentBook()
        await book.reset()
        bundle = kat_pb2.Bundle()
        cache: dict = {}  # type: ignore[type-arg]
        first = assignments_by_node([rec("a"), rec("b")], lambda _: bundle, cache)
        assert await book.publish(first) == ["n1"]
        revision = book.revision("n1")
        again = assignments_by_node([rec("a"), rec("b")], lambda _: bundle, cache)
        assert [x is y for x, y in zip(first["n1"], again["n1"], strict=True)] == [True, True]
        assert await book.publish(again) == []
        assert book.revision("n1") == revision
        bumped = assignments_by_node([rec("a"), rec("b", restarts=2)], lambda _: bundle, cache)
        assert bumped["n1"][0] is first["n1"][0] and bumped["n1"][1] is not first["n1"][1]
        assert bumped["n1"][1].instance.restart_count == 2
        assert await book.publish(bumped) == ["n1"]
        update = book.update("n1", revision or 0, deltas=True)
        assert update is not None and update.delta
        assert [a.instance.id for a in update.assignments] == ["b"] and not update.removed

    asyncio.run(run())


def test_a_stream_a_few_changes_behind_catches_up_in_one_delta() -> None:
    """Added, changed, removed and added again, peers changed in the middle: one message
    that takes the node from its revision to the current snapshot."""

    async def run() -> None:
        book = AssignmentBook()
        await book.reset()
        bundle = kat_pb2.Bundle()
        cache: dict = {}  # type: ignore[type-arg]

        async def publish(records: list[P], peers: list[kat_pb2.Peer]) -> None:
            await book.publish(assignments_by_node(records, lambda _: bundle, cache), peers)

        await publish([rec("a"), rec("b"), rec("c")], [peer("n1")])
        node_view = book.update("n1", -1, deltas=True)
        assert node_view is not None and not node_view.delta
        await publish([rec("a"), rec("b", restarts=1), rec("d")], [peer("n1")])
        await publish([rec("a"), rec("b", restarts=1), rec("d")], [peer("n1"), peer("n2")])
        await publish([rec("b", restarts=2), rec("d"), rec("c")], [peer("n1"), peer("n2")])
        update = book.update("n1", node_view.revision, deltas=True)
        assert update is not None and update.delta and update.peers_changed
        assert sorted(a.instance.id for a in update.assignments) == ["b", "c", "d"]
        assert list(update.removed) == ["a"]
        assert apply_update(node_view, update) == book.snapshot("n1")
        assert book.update("n1", update.revision, deltas=True) is None

    asyncio.run(run())


def test_a_stream_far_behind_or_without_deltas_gets_a_full_snapshot() -> None:
    async def run() -> None:
        book = AssignmentBook()
        await book.reset()
        await book.publish({"n1": [kat_pb2.Assignment(instance=rec("a"))]})
        start = book.revision("n1") or 0
        for i in range(HISTORY + 1):
            await book.publish({"n1": [kat_pb2.Assignment(instance=rec("a", restarts=i + 1))]})
        behind = book.update("n1", start, deltas=True)
        assert behind is not None and not behind.delta and len(behind.assignments) == 1
        plain = book.update("n1", start, deltas=False)
        assert plain is not None and not plain.delta

    asyncio.run(run())


def test_a_delta_that_does_not_follow_the_nodes_set_is_refused() -> None:
    full = kat_pb2.AssignmentSet(revision=5)
    with pytest.raises(DeltaOutOfSync):
        apply_update(full, kat_pb2.AssignmentSet(revision=9, delta=True, base_revision=7))
    with pytest.raises(DeltaOutOfSync):
        apply_update(None, kat_pb2.AssignmentSet(revision=9, delta=True, base_revision=5))


def test_published_changes_give_the_same_sets_as_a_full_publish() -> None:
    """The controller publishes only what changed per workload (AssignmentIndex +
    publish_changes); every node's stream still rebuilds exactly what a full publish of
    every record would give, and streams of untouched nodes are not woken."""
    from kat_agent.leader.assignment_index import AssignmentIndex

    async def run() -> None:
        book, full = AssignmentBook(), AssignmentBook()
        await book.reset()
        await full.reset()
        index = AssignmentIndex()
        bundle = kat_pb2.Bundle()
        web, db = ("default", "web"), ("default", "db")
        steps = [
            {web: [rec("a"), rec("b", "n2")], db: [rec("x", "n3")]},
            {web: [rec("a", restarts=1), rec("c", "n2")]},  # change a, b -> c; db untouched
            {db: []},  # db goes
        ]
        records: dict[tuple[str, str], list[P]] = {}
        views: dict[str, kat_pb2.AssignmentSet | None] = {}
        last: dict[str, int] = {}
        for step in steps:
            for key, rs in step.items():
                records[key] = rs
                index.update_workload(key, rs, lambda _: bundle)
            changed = await book.publish_changes(index.take_changes(), [peer("n1")])
            everything = [r for rs in records.values() for r in rs]
            await full.publish(assignments_by_node(everything, lambda _: bundle), [peer("n1")])
            for node in ("n1", "n2", "n3"):
                update = book.update(node, last.get(node, -1), deltas=True)
                if update is not None:
                    views[node] = apply_update(views.get(node), update)
                    last[node] = update.revision
                mine, want = views.get(node), full.snapshot(node)
                assert mine is not None and want is not None
                assert list(mine.assignments) == list(want.assignments), (node, step)
            if step is steps[1]:
                assert "n3" not in changed  # its set did not change: its stream sleeps on

    asyncio.run(run())


def test_a_node_reporting_its_instance_running_rebuilds_nothing() -> None:
    """SCHEDULED, PULLING, STARTING and RUNNING are all "it should exist" to the node: the
    leader recording the node's own reports of them keeps the assignment object (no new
    Assignment with a copy of the bundle, no comparison of it with the old one) and
    sends nothing; FAILED and TERMINATING the node must hear."""
    from kat_agent.leader.assignment_index import AssignmentIndex

    async def run() -> None:
        book, index, bundle = AssignmentBook(), AssignmentIndex(), kat_pb2.Bundle()
        await book.reset()
        key = ("default", "web")
        a = rec("a")
        a.phase = P.SCHEDULED
        index.update_workload(key, [a], lambda _: bundle)
        assert await book.publish_changes(index.take_changes(), []) == ["n1"]
        first = index.by_node["n1"]["a"]
        for phase in (P.PULLING, P.STARTING, P.RUNNING):
            a.phase = phase
            index.update_workload(key, [a], lambda _: bundle)
            assert index.by_node["n1"]["a"] is first, phase
            assert index.take_changes() == {}, phase
        assert first.instance.phase == P.SCHEDULED
        for phase in (P.FAILED, P.TERMINATING):
            a.phase = phase
            index.update_workload(key, [a], lambda _: bundle)
            assert await book.publish_changes(index.take_changes(), []) == ["n1"], phase

    asyncio.run(run())
