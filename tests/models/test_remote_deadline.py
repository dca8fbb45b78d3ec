"""Every request for model metadata has a total deadline (audit a1 #12): a server that sends its headers and then a
byte every few seconds hung `plan` for good (the per-read timeout never trips), and one that accepts and never
answers cost 4 tries x 20 s + backoff = 84 s. Now one request, all its tries and waits, ends within deadline_s."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from stackgen.models.remote import HttpClient, RemoteError


class RawServer:
    """127.0.0.1 listener whose every connection is handled by `serve(conn)`; stops with the block."""

    def __init__(self, serve) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.serve, self.stop, self.conns = serve, threading.Event(), []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self.serve, args=(conn, self.stop), daemon=True).start()

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/m.gguf"

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        for c in self.conns:
            c.close()
        self.sock.close()


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    """Headers at once, then one byte every 0.2 s of a 1 MB body (for at most 20 s)."""
    try:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nContent-Type: application/octet-stream\r\n\r\n")
        end = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < end:
            conn.sendall(b"G")
            time.sleep(0.2)
    except OSError:
        pass


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accepts, reads the request, never answers."""
    try:
        conn.recv(65536)
    except OSError:
        pass
    stop.wait(20)


@pytest.mark.parametrize("serve", [trickle, silent])
def test_a_stalled_server_costs_at_most_the_deadline(serve):
    c = HttpClient(env={}, timeout_s=1.0, deadline_s=2.0, retries=3, backoff_s=0.25)
    with RawServer(serve) as url:
        start = time.monotonic()
        with pytest.raises(RemoteError) as info:
            c.get(url, "m.gguf")
        took = time.monotonic() - start
    assert took < 3.0, f"took {took:.1f} s"  # the deadline plus scheduling slack; 4 tries x 1 s + 1.75 s before
    assert "within 2 s" in str(info.value) and url in str(info.value)


def test_a_fast_answer_is_whole_and_within_the_deadline():
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        conn.close()

    with RawServer(answer) as url:
        resp = HttpClient(env={}, timeout_s=1.0, deadline_s=2.0).get(url, "m.gguf")
    assert resp.status == 200 and resp.body == b"hello"
