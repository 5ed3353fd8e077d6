from internal.core.ratelimit import FailureLimiter, peer_host


def test_a_source_is_stopped_after_its_burst_and_recovers() -> None:
    lim = FailureLimiter(burst=3, per_second=1.0)
    for _ in range(3):
        assert lim.allowed("10.0.0.2", 0.0)
        lim.refused("10.0.0.2", 0.0)
    assert not lim.allowed("10.0.0.2", 0.5)
    assert lim.allowed("10.0.0.3", 0.5)  # others are not affected
    assert lim.allowed("10.0.0.2", 1.0)


def test_the_number_of_sources_kept_is_bounded() -> None:
    lim = FailureLimiter(burst=1, per_second=0.001, max_sources=100)
    for i in range(10_000):
        lim.refused(f"src{i}", 0.0)
    assert len(lim) == 100
    assert not lim.allowed("src9999", 0.0)


def test_peer_host() -> None:
    assert peer_host("ipv4:10.0.0.2:5000") == "10.0.0.2"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/run/x") == "unix:/run/x"
