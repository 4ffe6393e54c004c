#!/usr/bin/env python3
"""A network peer for the live tests: each action makes exactly the sockets
the test expects events for, reports its addresses as one JSON line per
step on stdout, and waits for a line on stdin before it closes, so that the
test controls when closes happen."""

import json
import os
import select
import socket
import sys

# As the tests' deadlines: slower machines get longer (AUSPEX_TEST_TIME_SCALE).
TIME_SCALE = int(os.environ.get("AUSPEX_TEST_TIME_SCALE", "1"))


def say(**fields):
    print(json.dumps(fields), flush=True)


def wait_for_go():
    sys.stdin.readline()


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def addr(sockaddr):
    return [sockaddr[0], sockaddr[1]]


def tcp_server(host, port):
    """Listen, accept one connection, wait for EOF from the client, close."""
    listener = socket.socket(family_of(host), socket.SOCK_STREAM)
    listener.bind((host, int(port)))
    listener.listen(1)
    say(listening=addr(listener.getsockname()))
    conn, peer = listener.accept()
    say(accepted=addr(peer), local=addr(conn.getsockname()))
    while conn.recv(4096):
        pass
    conn.close()
    say(closed=True)
    wait_for_go()
    listener.close()
    say(done=True)


def tcp_client(host, port, mode="blocking"):
    """Connect (blocking or non-blocking), report, wait, close."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    if mode == "nonblocking":
        s.setblocking(False)
        err = s.connect_ex((host, int(port)))
        assert err in (0, 115), err  # EINPROGRESS
        select.select([], [s], [], 5 * TIME_SCALE)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        assert err == 0, err
        s.setblocking(True)
    else:
        s.connect((host, int(port)))
    say(local=addr(s.getsockname()), remote=addr(s.getpeername()))
    wait_for_go()
    s.close()
    say(done=True)


def tcp_refused(host, port):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    err = s.connect_ex((host, int(port)))
    say(error=err)
    s.close()


def udp_connected(host, port):
    """A connected UDP socket: one datagram, wait, close."""
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.connect((host, int(port)))
    s.send(b"hello")
    say(local=addr(s.getsockname()), remote=addr(s.getpeername()))
    wait_for_go()
    s.close()
    say(done=True)


def udp_echo(host, port, count):
    """Bind, echo `count` datagrams back to whoever sent them, close."""
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    say(bound=addr(s.getsockname()))
    for _ in range(int(count)):
        data, peer = s.recvfrom(4096)
        s.sendto(data, peer)
    wait_for_go()
    s.close()
    say(done=True)


def udp_talk(host, count, *ports):
    """One unconnected socket: `count` datagrams to each port, each echoed
    back and read with recvfrom; then wait and close."""
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    for port in ports:
        for _ in range(int(count)):
            s.sendto(b"ping", (host, int(port)))
            s.recvfrom(4096)
    say(local=addr(s.getsockname()))
    wait_for_go()
    s.close()
    say(done=True)


def tcp_accept_n(host, port, count):
    """Listen, accept `count` connections (closing each), close."""
    listener = socket.socket(family_of(host), socket.SOCK_STREAM)
    listener.bind((host, int(port)))
    listener.listen(128)
    say(listening=addr(listener.getsockname()))
    for _ in range(int(count)):
        conn, _ = listener.accept()
        conn.recv(1)
        conn.close()
    listener.close()
    say(done=True)


def tcp_connect_n(host, port, count):
    """Connect `count` times, closing each connection at once."""
    for _ in range(int(count)):
        s = socket.create_connection((host, int(port)))
        s.close()
    say(done=True)


ACTIONS = {
    "tcp-accept-n": tcp_accept_n,
    "tcp-connect-n": tcp_connect_n,
    "tcp-server": tcp_server,
    "tcp-client": tcp_client,
    "tcp-refused": tcp_refused,
    "udp-connected": udp_connected,
    "udp-echo": udp_echo,
    "udp-talk": udp_talk,
}

if __name__ == "__main__":
    ACTIONS[sys.argv[1]](*sys.argv[2:])
