import pytest

from internal.manifests.quantity import format_cpu, format_memory, parse_cpu, parse_memory


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("500m", 500),
        ("2", 2000),
        ("0.5", 500),
        ("1.5", 1500),
        (".25", 250),
        ("0", 0),
        ("1.", 1000),
        (" 3 ", 3000),
        ("0.001", 1),
        ("100000m", 100000),
    ],
)
def test_parse_cpu(text: str, millis: int) -> None:
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty cpu quantity"),
        ("-1", 'invalid cpu quantity "-1": must not be negative'),
        ("0.0005", 'invalid cpu quantity "0.0005": finer than 1m'),
        ("1.5m", 'invalid cpu quantity "1.5m": expected cores'),
        ("2 cores", 'invalid cpu quantity "2 cores"'),
        ("1e3", 'invalid cpu quantity "1e3"'),
        ("abc", 'invalid cpu quantity "abc"'),
        ("99999999999999999999", 'quantity "99999999999999999999" is too large'),
    ],
)
def test_parse_cpu_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_cpu(text)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "n_bytes"),
    [
        ("64Mi", 64 * 2**20),
        ("1Gi", 2**30),
        ("128M", 128_000_000),
        ("1G", 10**9),
        ("1048576", 1048576),
        ("1k", 1000),
        ("2Ki", 2048),
        ("1.5Gi", 3 * 2**29),
        ("1Ti", 2**40),
        ("0", 0),
        ("0.5Ki", 512),
    ],
)
def test_parse_memory(text: str, n_bytes: int) -> None:
    assert parse_memory(text) == n_bytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty memory quantity"),
        ("-64Mi", "must not be negative"),
        ("64MB", 'unknown suffix "MB"'),
        ("64K", 'unknown suffix "K" (use k (1000) or Ki (1024))'),
        ("64m", 'unknown suffix "m" (m would mean millibytes'),
        ("64mi", 'unknown suffix "mi"'),
        ("1e3", "expected a number with an optional suffix"),
        ("0.5", "not a whole number of bytes"),
        ("Mi", "expected a number"),
        ("100000Ei", "is too large"),
    ],
)
def test_parse_memory_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_memory(text)
    assert message in str(err.value)
    assert f'"{text}"' in str(err.value) or not text


@pytest.mark.parametrize(
    ("millis", "text"), [(2000, "2"), (500, "500m"), (1500, "1500m"), (0, "0")]
)
def test_format_cpu(millis: int, text: str) -> None:
    assert format_cpu(millis) == text
    assert parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("n_bytes", "text"),
    [(64 * 2**20, "64Mi"), (2**30, "1Gi"), (1000, "1000"), (0, "0"), (3072, "3Ki"), (1536, "1536")],
)
def test_format_memory(n_bytes: int, text: str) -> None:
    assert format_memory(n_bytes) == text
    assert parse_memory(text) == n_bytes


def test_format_negative() -> None:
    with pytest.raises(ValueError):
        format_cpu(-1)
    with pytest.raises(ValueError):
        format_memory(-1)
