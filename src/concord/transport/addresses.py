"""The address book: where each known node's peer listener is (node id -> peer URL).

Founding members come from the configuration; the transport also learns a sender's URL from
the ``X-Concord-Peer-URL`` header of its requests, and the runtime from membership records.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit


def check_peer_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host, else raise ValueError."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        raise ValueError(f"peer URL {url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ValueError(f"peer URL {url!r} must be http(s)://host[:port]")
    return url


class AddressBook:
    """Mutable node id -> peer URL map; every URL in it passed ``check_peer_url``."""

    __slots__ = ("_urls",)

    def __init__(self, initial: Mapping[str, str]) -> None:
        self._urls: dict[str, str] = {}
        for node_id, url in initial.items():
            self.set(node_id, url)

    def get(self, node_id: str) -> str | None:
        return self._urls.get(node_id)

    def set(self, node_id: str, url: str) -> None:
        """Record (or replace) a node's peer URL; ValueError if the id or URL is unusable."""
        if not node_id:
            raise ValueError("node id must not be empty")
        self._urls[node_id] = check_peer_url(url.rstrip("/"))

    def remove(self, node_id: str) -> None:
        """Forget a node; forgetting an unknown node is not an error."""
        self._urls.pop(node_id, None)

    def snapshot(self) -> dict[str, str]:
        """A copy of the whole book."""
        return dict(self._urls)
