"""Ports for test and benchmark clusters: free, consecutive, and outside the ephemeral range
(where an outgoing connection's source port could take one before the node binds it)."""

from __future__ import annotations

import socket

from concord.cluster import PORT_RANGE, busy_ports, free_cluster_ports, free_port_block


def test_a_block_is_free_consecutive_and_below_the_ephemeral_range() -> None:
    for _ in range(20):
        base = free_port_block(5)
        assert PORT_RANGE[0] <= base and base + 5 <= PORT_RANGE[1] <= 32_768
        held = []
        try:
            for port in range(base, base + 5):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(probe)
                # as the nodes bind: a port whose last connections linger in TIME_WAIT is free
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
        finally:
            for probe in held:
                probe.close()


def test_client_and_peer_blocks_never_overlap() -> None:
    for _ in range(50):
        client, peer = free_cluster_ports(7)
        assert not set(range(client, client + 7)) & set(range(peer, peer + 7))


def test_busy_ports_names_the_ports_a_listener_holds() -> None:
    base = free_port_block(3)
    assert busy_ports(range(base, base + 3)) == []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", base + 1))
        listener.listen()
        assert busy_ports(range(base, base + 3)) == [base + 1]
    assert busy_ports(range(base, base + 3)) == []
