from api.v1alpha1 import kat_pb2
from kat_agent.node.network.firewall import control_ports, ruleset


def test_every_control_port_is_guarded() -> None:
    spec = kat_pb2.ClusterConfigurationSpec(
        api_port=9115, agent_port=9116, join_port=9117, etcd_client_port=2379, etcd_peer_port=2380
    )
    assert control_ports(spec) == [2379, 2380, 9115, 9116, 9117]


def test_rules_cover_workload_users_and_instance_addresses() -> None:
    text = ruleset([9115, 2379], [60001], ["10.100.0.0/16"])
    assert "meta skuid { 60001 } tcp dport { 9115, 2379 } reject with tcp reset" in text
    for hook in ("input", "forward"):
        assert f"type filter hook {hook} priority 0" in text
    assert text.count("ip saddr { 10.100.0.0/16 } tcp dport { 9115, 2379 } reject") == 2
    # no workload user yet: the output chain is there, without a rule
    assert "skuid" not in ruleset([9115], [], ["10.100.0.0/16"])
