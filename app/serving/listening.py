"""The socket the server listens on: bound by the command before it migrates or starts any
worker, so that an address it cannot have ends the start at once, with the OS's reason.
"""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host` and `port`, as uvicorn binds one for its workers: IPv6
    when the host has a colon, IPv4 otherwise (a name resolves to its first IPv4 address).

    :raises OSError: the address is in use, not one of this machine's, or not allowed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family=family)
    try:
        # A port whose earlier connections linger in TIME_WAIT can be listened on again.
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
    except OSError:
        listening.close()
        raise
    # The worker processes are handed it.
    listening.set_inheritable(True)
    return listening


def printable_address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
