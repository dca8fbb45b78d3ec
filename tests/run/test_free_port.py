"""preflight.free_port: the one helper that picks a local port for a server started right after (calibrate's engine
runs, the benchmarks' servers, the host-check tests)."""

from __future__ import annotations

import socket

from stackgen.run.preflight import free_port, port_in_use


def test_free_port_is_free_and_bindable_then_taken_while_held():
    port = free_port()
    assert 1024 <= port <= 65535
    assert not port_in_use("127.0.0.1", port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert port_in_use("127.0.0.1", port)
        # while it is held, the kernel picks another one
        assert free_port() != port
