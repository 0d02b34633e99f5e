"""The SSRF policy of webhook URLs (``bus.webhooks.urls``), with names resolved by a stub where
the test needs a name to answer a given address (the API tests use the real resolver)."""

from __future__ import annotations

import pytest

from bus.errors import BusError
from bus.settings import Settings
from bus.webhooks.urls import UrlPolicy, parse_networks

POLICY = UrlPolicy()
REFUSED_ADDRESSES = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "0.0.0.0",
    "::",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # shared address space (carrier NAT)
    "fd12:3456::1",
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "fd00:ec2::254",  # AWS metadata over IPv6
    "169.254.1.1",
    "fe80::1",
    "fe80::1%eth0",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "fec0::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "192.0.2.10",  # documentation
]
ALLOWED_ADDRESSES = [
    "93.184.215.14",
    "2606:4700::1111",
    "::ffff:93.184.215.14",
    "64:ff9b::5db8:d70e",
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_internal_addresses_are_refused(address: str) -> None:
    assert not POLICY.address_allowed(address)
    with pytest.raises(BusError, match="URL not allowed"):
        POLICY.check_address(address)


@pytest.mark.parametrize("address", ALLOWED_ADDRESSES)
def test_public_addresses_are_allowed(address: str) -> None:
    assert POLICY.address_allowed(address)
    POLICY.check_address(address)


def test_the_allow_list_lets_its_networks_through() -> None:
    policy = UrlPolicy(parse_networks("127.0.0.0/8, 10.1.0.0/16,fd00::/8"))

    assert policy.address_allowed("127.0.0.1")
    assert policy.address_allowed("::ffff:127.0.0.1")  # the address it reaches is listed
    assert policy.address_allowed("10.1.2.3")
    assert policy.address_allowed("fd12::1")
    assert not policy.address_allowed("10.2.0.1")
    assert not policy.address_allowed("::1")
    assert not policy.address_allowed("169.254.169.254")


def test_the_policy_comes_from_the_settings() -> None:
    policy = UrlPolicy.from_settings(Settings(webhook_allow_networks="127.0.0.1"))

    assert policy.allow == parse_networks("127.0.0.1/32")
    assert UrlPolicy.from_settings(Settings()).allow == ()
    with pytest.raises(ValueError, match="webhook_allow_networks"):
        Settings(webhook_allow_networks="127.0.0.0/8,not-a-network")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://10.0.0.5/hook",
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/",
    ],
)
def test_a_literal_address_is_checked_without_resolving(url: str) -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("a literal address is not resolved")

    with pytest.raises(BusError, match="URL not allowed"):
        POLICY.check_url(url, resolve)


def test_a_name_is_refused_when_any_of_its_addresses_is() -> None:
    # Given a name answering one public and one private address
    answers = {"mixed.example": ["93.184.215.14", "10.0.0.7"], "ok.example": ["93.184.215.14"]}
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers.get(host, [])

    # Then it is refused, a name with public addresses only is taken, one with none is not found
    with pytest.raises(BusError, match="URL not allowed"):
        POLICY.check_url("https://mixed.example/hook", resolve)
    assert POLICY.check_url("https://ok.example:8443/hook", resolve) == (
        "https://ok.example:8443/hook"
    )
    with pytest.raises(BusError, match="URL host not found"):
        POLICY.check_url("http://nowhere.example/hook", resolve)
    assert asked == [("mixed.example", 443), ("ok.example", 8443), ("nowhere.example", 80)]


def test_localhost_resolves_to_loopback_and_is_refused() -> None:
    with pytest.raises(BusError, match="URL not allowed"):
        POLICY.check_url("http://localhost:8000/hook")
    allowed = UrlPolicy(parse_networks("127.0.0.0/8,::1/128"))
    assert allowed.check_url("http://localhost:8000/hook") == "http://localhost:8000/hook"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http:///no-host",
        "http://user:secret@example.com/hook",
        "http://user@example.com/hook",
        "https://example.com/hook#fragment",
        "https://example.com/ hook",
        "https://example.com/\nhook",
        "https://example.com:0/hook",
        "https://example.com:99999/hook",
        "https://example.com:port/hook",
        "http://[::1/hook",
        "https://example.com/" + "x" * 2048,
        None,
        42,
        ["https://example.com/"],
    ],
)
def test_what_is_no_http_url_is_invalid(url: object) -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    with pytest.raises(BusError, match=r"^Invalid url$"):
        POLICY.check_url(url, resolve)
