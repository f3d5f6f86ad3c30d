"""Hypothesis strategies for image URLs: one IPv4 address written in every spelling a C
resolver (inet_aton) or a browser (WHATWG URL) reads as that address: decimal, octal,
hex, the 1-, 2- and 3-part short forms, IPv4-mapped IPv6, a trailing dot, full-width
digits."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
PRIVATE_V4 = [ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
SHARED = ipaddress.IPv4Network("100.64.0.0/10")
NEVER_V4 = [ipaddress.IPv4Network(n) for n in ("169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")]


def _in(network: ipaddress.IPv4Network) -> st.SearchStrategy[ipaddress.IPv4Address]:
    first = int(network.network_address)
    return st.integers(first, first + network.num_addresses - 1).map(ipaddress.IPv4Address)


private_v4 = st.one_of(_in(LOOPBACK), _in(SHARED), *(_in(n) for n in PRIVATE_V4))
never_v4 = st.one_of(*(_in(n) for n in NEVER_V4), st.just(ipaddress.IPv4Address(0)))
#: Public unicast IPv4: the first octet of a handful of public /8s.
public_v4 = st.builds(
    lambda first, rest: ipaddress.IPv4Address((first << 24) + rest),
    st.sampled_from([1, 8, 23, 45, 52, 93, 104, 142, 151, 185, 208, 216]),
    st.integers(0, 2**24 - 1),
)


def _number(value: int, style: str) -> str:
    return {"dec": str(value), "oct": "0" + format(value, "o"), "hex": hex(value)}[style]


@st.composite
def spellings(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """One way to write ``address`` in a URL's host that resolvers and browsers accept."""
    octets = list(address.packed)
    form = draw(st.sampled_from(["dotted", "one", "two", "three", "mapped", "fullwidth"]))
    style = st.sampled_from(["dec", "oct", "hex"])
    if form == "mapped":
        high, low = int(address) >> 16, int(address) & 0xFFFF
        return draw(st.sampled_from([f"[::ffff:{address}]", f"[::ffff:{high:x}:{low:x}]"]))
    if form == "fullwidth":
        return str(address).translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
    if form == "one":
        host = _number(int(address), draw(style))
    elif form == "two":
        host = f"{_number(octets[0], draw(style))}.{_number(int(address) & 0xFFFFFF, draw(style))}"
    elif form == "three":
        host = ".".join(
            [
                _number(octets[0], draw(style)),
                _number(octets[1], draw(style)),
                _number(int(address) & 0xFFFF, draw(style)),
            ]
        )
    else:
        host = ".".join(_number(octet, draw(style)) for octet in octets)
    if draw(st.booleans()):
        host = host.upper() if "x" in host else host
    return host + ("." if draw(st.booleans()) else "")


@st.composite
def urls(draw: st.DrawFn, addresses: st.SearchStrategy[ipaddress.IPv4Address]) -> str:
    address = draw(addresses)
    host = draw(spellings(address))
    scheme = draw(st.sampled_from(["http", "https", "HTTP"]))
    port = draw(st.sampled_from(["", ":80", ":6379", ":8765"]))
    path = draw(st.sampled_from(["/", "/a.png", "/media/x.png?sig=1", ""]))
    return f"{scheme}://{host}{port}{path}"
