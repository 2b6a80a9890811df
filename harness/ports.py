"""Local TCP ports: a free one for a server or a rendezvous, and whether one is held already."""

from __future__ import annotations

import errno
import socket


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_taken(host: str, port: int) -> bool:
    """True when something on this host holds `port` (or it may not be bound: a privileged port)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False
