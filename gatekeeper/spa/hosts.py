"""The host an address names, for the codecs that carry an address in their request."""

from __future__ import annotations

import ipaddress


def host_ip(value: str | bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``value`` (text or packed) as an address; ValueError if it is none.

    An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) names the IPv4 host ``a.b.c.d``: its
    packets arrive from ``a.b.c.d``, so that is what is compared, granted and put in the
    kernel set (a grant for the mapped form would never admit it).
    """
    ip = ipaddress.ip_address(value)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
