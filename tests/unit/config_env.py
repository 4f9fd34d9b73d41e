"""The least environment ``load_config`` accepts: one member, this node."""

from __future__ import annotations

from typing import Final

MINIMAL_NODE_ENV: Final = {
    "CONCORD_NODE_ID": "n1", "CONCORD_DATA_DIR": "/tmp/x",
    "CONCORD_CLIENT_LISTEN": "127.0.0.1:1", "CONCORD_PEER_LISTEN": "127.0.0.1:2",
    "CONCORD_MEMBERS": "n1=http://127.0.0.1:2;http://127.0.0.1:1",
}
