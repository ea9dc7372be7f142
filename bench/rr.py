#!/usr/bin/env python3
"""TCP request/response probes for the network figures.

  rr.py serve PORT SECS        echo 64-byte requests on PORT (one client at a time) for SECS
  rr.py rr HOST PORT N         N round trips of 64 bytes; prints "p50_us p99_us"
  rr.py gap HOST PORT SECS     a round trip every 2 ms for SECS on one connection; prints
                               "max_gap_ms round_trips" (the longest time between answers)
"""
import socket
import sys
import time

MSG = b"x" * 64


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    return buf


def serve(port, secs):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4)
    srv.settimeout(1)
    end = time.time() + secs
    while time.time() < end:
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(max(1, end - time.time()))
        try:
            while True:
                c.sendall(recv_exact(c, len(MSG)))
        except (EOFError, OSError):
            c.close()


def connect(host, port):
    deadline = time.time() + 10
    while True:
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def rr(host, port, n):
    s = connect(host, port)
    for _ in range(20):  # warm up (handshakes, ARP)
        s.sendall(MSG)
        recv_exact(s, len(MSG))
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(MSG)
        recv_exact(s, len(MSG))
        lat.append((time.perf_counter() - t) * 1e6)
    lat.sort()
    print("%.0f %.0f" % (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]))


def gap(host, port, secs):
    s = connect(host, port)
    s.settimeout(30)
    end = time.time() + secs
    last = time.perf_counter()
    worst, n = 0.0, 0
    while time.time() < end:
        s.sendall(MSG)
        recv_exact(s, len(MSG))
        now = time.perf_counter()
        worst, last, n = max(worst, now - last), now, n + 1
        time.sleep(0.002)
    print("%.1f %d" % (worst * 1000, n))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]), float(sys.argv[3]))
    elif mode == "rr":
        rr(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "gap":
        gap(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(__doc__)
