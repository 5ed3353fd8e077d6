"""katcall's parsing and output, without a cluster: global flags anywhere, the closest
command, output formats (zero values, name, jsonpath), selectors, watch rows, config view
redaction and describe's human-readable node."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from api.v1alpha1 import kat_pb2
from internal.security import clientconfig
from katcall import cli, config_cmd, describe_cmd, get_cmd, output, watch


def parse(*argv: str) -> argparse.Namespace:
    return cli.parse(cli.build_parser(), list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ("-n", "ux", "--context", "x", "-o", "json", "get", "workloads", "web"),
        ("get", "workloads", "-n", "ux", "web", "--context", "x", "-o", "json"),
        ("get", "--context=x", "workloads", "web", "--namespace=ux", "--output=json"),
        ("get", "workloads", "-n", "ux", "-o", "json", "--context", "x", "web"),
    ],
)
def test_global_flags_before_or_after_the_command(argv: tuple[str, ...]) -> None:
    a = parse(*argv)
    assert (a.resource, a.name, a.namespace, a.context, a.output) == (
        "workloads",
        "web",
        "ux",
        "x",
        "json",
    )


def test_global_flags_in_nested_commands_and_defaults() -> None:
    a = parse("config", "view", "--katconfig", "/tmp/k")
    assert a.katconfig == "/tmp/k"
    a = parse("get", "nodes")
    assert (a.namespace, a.context, a.output, a.all_namespaces) == ("", None, "", False)
    assert parse("get", "instances", "-A").all_namespaces


def test_unknown_extra_arguments_are_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("get", "workloads", "web", "-n", "ux", "extra")
    assert "unrecognized arguments: extra" in capsys.readouterr().err


def test_mistyped_command_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("gte", "nodes")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'gte'; did you mean 'get'?" in err
    with pytest.raises(SystemExit):
        parse("config", "veiw")
    assert "did you mean 'view'?" in capsys.readouterr().err


def test_mistyped_resource_suggests_the_closest() -> None:
    with pytest.raises(SystemExit, match="did you mean 'workloads'"):
        get_cmd.resource("wrkloads")


def test_help_groups_commands_like_kubectl(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    text = capsys.readouterr().out
    groups = [
        "Basic commands:",
        "Deploy commands:",
        "Cluster management commands:",
        "Troubleshooting and debugging commands:",
        "Settings commands:",
    ]
    positions = [text.index(g) for g in groups]
    assert positions == sorted(positions)
    for cmd in ("version", "cluster-info", "completion", "describe", "logs", "exec", "apply"):
        assert f"\n  {cmd} " in text


def test_exec_options_after_the_workload_combine() -> None:
    a = parse("exec", "web", "-it", "-n", "ux", "--", "sh", "-c", "ls")
    assert a.workload == "web" and a.command == ["-it", "-n", "ux", "--", "sh", "-c", "ls"]
    # the command re-parses what came before "--" (as cmd_exec does)
    from katcall import logs_cmd, session

    late = argparse.ArgumentParser(add_help=False)
    logs_cmd._exec_options(late, suppress=True)
    session.add_global_options_to(late)
    late.parse_args(["-it", "-n", "ux"], namespace=a)
    assert (a.stdin, a.tty, a.namespace) == (True, True, "ux")


def test_json_shows_zero_values_and_int64_as_numbers() -> None:
    inst = kat_pb2.Instance(id="web-1", workload="web", namespace="default")
    doc = output.to_dict(inst)
    assert doc["ready"] is False and doc["restartCount"] == 0
    node = kat_pb2.Node(status=kat_pb2.NodeStatus(capacity=kat_pb2.NodeResources(memory_bytes=25)))
    assert output.to_dict(node)["status"]["capacity"]["memoryBytes"] == 25


def test_named_render_is_the_object_and_name_format() -> None:
    w = kat_pb2.Workload(metadata=kat_pb2.ObjectMeta(name="web", namespace="default"))
    single = json.loads(output.render([w], "json", single=True))
    assert single["metadata"]["name"] == "web" and "items" not in single
    assert json.loads(output.render([w], "json"))["items"][0]["metadata"]["name"] == "web"
    assert output.render([w, w], "name", kind="workload") == "workload/web\nworkload/web"


def test_jsonpath_kubectl_style() -> None:
    doc = {"items": [{"metadata": {"name": "a"}, "ready": False}, {"metadata": {"name": "b"}}]}
    assert output.jsonpath("{.items[*].metadata.name}", doc) == "a b"
    assert output.jsonpath(r'{range .items[*]}{.metadata.name}{"\n"}{end}', doc) == "a\nb\n"
    assert output.jsonpath("{.items[0].ready}", doc) == "false"
    assert output.jsonpath(".items[1].metadata.name", doc) == "b"
    for bad in ("{.items[}", "{range .items[*]}", "{end}"):
        with pytest.raises(output.OutputError):
            output.check_format("jsonpath=" + bad)
    with pytest.raises(output.OutputError, match="unknown output format 'tabel'"):
        output.check_format("tabel")


def test_selector_parsing() -> None:
    assert get_cmd.parse_selector("app=web, tier==front") == {"app": "web", "tier": "front"}
    with pytest.raises(argparse.ArgumentTypeError):
        get_cmd.parse_selector("app")
    assert parse("get", "nodes", "-l", "zone=a").selector == {"zone": "a"}


def test_watch_rows_keep_the_header_widths_and_print_only_changes() -> None:
    rp = watch.RowPrinter(["NAMESPACE", "NAME", "PHASE"])
    first = rp.start([("a", ["default", "web-1", "PENDING"])])
    assert first[0].split() == ["NAMESPACE", "NAME", "PHASE"]
    assert first[1].index("web-1") == first[0].index("NAME", 1)
    assert rp.show("a", ["default", "web-1", "PENDING"]) is None
    changed = rp.show("a", ["default", "web-1", "RUNNING"])
    assert changed is not None and changed.index("RUNNING") == first[0].index("PHASE")


def test_watch_rows_ignore_the_clock() -> None:
    rp = watch.RowPrinter(["NAME", "STATUS", "AGE"])
    rp.start([("n", ["n1", "READY", "3s"])])
    assert rp.show("n", ["n1", "READY", "5s"]) is None
    assert rp.show("n", ["n1", "NOT_READY", "7s"]) is not None


def test_config_view_redacts_keys(tmp_path: Path) -> None:
    ctx = clientconfig.Context("home", ["127.0.0.1:1"], b"CA PEM", b"CERT PEM", b"SECRET KEY")
    text = config_cmd.view(clientconfig.ClientConfig({"home": ctx}, "home"))
    assert "SECRET" not in text and "CERT PEM" not in text and text.count("REDACTED") == 3
    assert "SECRET KEY" in config_cmd.view(clientconfig.ClientConfig({"home": ctx}, "home"), True)


def test_describe_node_is_a_readable_table() -> None:
    node = kat_pb2.Node(
        metadata=kat_pb2.ObjectMeta(name="n1", labels={"zone": "a"}),
        status=kat_pb2.NodeStatus(
            condition=kat_pb2.NodeStatus.READY,
            capacity=kat_pb2.NodeResources(cpu_millis=4000, memory_bytes=25276510208),
            allocatable=kat_pb2.NodeResources(cpu_millis=4000, memory_bytes=25276510208),
            subnet="10.100.1.0/24",
        ),
    )
    spec = kat_pb2.WorkloadSpec()
    spec.container.resources.requests.cpu = "1"
    spec.container.resources.requests.memory = "1Gi"
    w = kat_pb2.Workload(metadata=kat_pb2.ObjectMeta(name="web", namespace="default"), spec=spec)
    inst = kat_pb2.Instance(
        id="web-1", workload="web", namespace="default", node="n1", phase=kat_pb2.Instance.RUNNING
    )
    text = describe_cmd.describe_node(node, [inst], {("default", "web"): w}, [])
    assert "memoryBytes" not in text and "25276510208" not in text
    resources = {line.split()[0]: line.split() for line in text.splitlines() if line[:3] == "  c"}
    assert resources["cpu"] == ["cpu", "4", "4", "1", "(25%)"]
    assert "memory     23.5Gi     23.5Gi        1Gi (4%)" in text
    assert "zone=a" in text and "10.100.1.0/24" in text and "web-1" in text


def test_resource_aliases() -> None:
    assert get_cmd.resource("wl").name == "workloads"
    assert get_cmd.resource("inst").name == get_cmd.resource("instance").name == "instances"
    assert get_cmd.resource("no").name == "nodes" and get_cmd.resource("ns").name == "namespaces"


def test_resources_registered_the_older_way_still_print() -> None:
    def tabler(items: list, wide: bool) -> str:
        rows = [[n.metadata.name, "ok"] for n in items]
        return output.table(["NAME", "STATE"], rows)

    get_cmd.register_resource("widgets", lambda c, a: [], tabler, "widget")
    try:
        res = get_cmd.resource("widget")
        ns = kat_pb2.Namespace(metadata=kat_pb2.ObjectMeta(name="w1"))
        assert get_cmd.print_table(res, [ns], False, False).split() == ["NAME", "STATE", "w1", "ok"]
        assert output.render([ns], "name", kind=res.kind) == "widget/w1"
    finally:
        get_cmd.RESOURCES.pop("widgets")
        get_cmd.ALIASES.pop("widget")
