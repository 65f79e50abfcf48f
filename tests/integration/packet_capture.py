"""A packet capture on the loopback (``tcpdump``, as root) and what it holds, per TCP stream.

``tcpdump -w`` writes the classic pcap format; on Linux's ``lo`` each frame has an Ethernet header (link type
1). Only IPv4/TCP is read: the testbed's services listen on 127.0.0.0/8. A stream is one direction of one TCP
connection (source and destination address and port); its payload is the segments' bytes in capture order,
which on the loopback is the order they were sent, so a string split across two segments is still found.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PCAP_MAGIC_MICROSECONDS, PCAP_MAGIC_NANOSECONDS = 0xA1B2C3D4, 0xA1B23C4D
LINKTYPE_ETHERNET, ETHERTYPE_IPV4, PROTOCOL_TCP = 1, 0x0800, 6

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Stream:
    source: Endpoint
    destination: Endpoint


@dataclass
class Capture:
    """The payload bytes of every stream in a capture file."""

    payloads: dict[Stream, bytearray] = field(default_factory=lambda: defaultdict(bytearray))
    packets: int = 0

    def to_port(self, port: int) -> list[bytes]:
        """The client-to-server payloads of every connection to ``port``."""
        return [
            bytes(data) for stream, data in self.payloads.items() if stream.destination[1] == port and data
        ]

    def streams_holding(self, needle: bytes) -> list[Stream]:
        return [stream for stream, data in self.payloads.items() if needle in data]

    def total_bytes(self) -> int:
        return sum(len(data) for data in self.payloads.values())


def read_pcap(path: Path) -> Capture:
    data = path.read_bytes()
    (magic,) = struct.unpack_from("<I", data, 0)
    assert magic in (PCAP_MAGIC_MICROSECONDS, PCAP_MAGIC_NANOSECONDS), (
        f"{path}: not a little-endian pcap file"
    )
    (linktype,) = struct.unpack_from("<I", data, 20)
    assert linktype == LINKTYPE_ETHERNET, f"{path}: link type {linktype}, expected Ethernet (lo on Linux)"
    capture, offset = Capture(), 24
    while offset + 16 <= len(data):
        captured_length, original_length = struct.unpack_from("<II", data, offset + 8)
        frame = data[offset + 16 : offset + 16 + captured_length]
        offset += 16 + captured_length
        assert captured_length == original_length, "a packet was cut short: tcpdump must run with -s 0"
        capture.packets += 1
        _add_frame(capture, frame)
    return capture


def _add_frame(capture: Capture, frame: bytes) -> None:
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETHERTYPE_IPV4:
        return
    ip = frame[14:]
    header_length, total_length, protocol = (ip[0] & 0x0F) * 4, struct.unpack_from("!H", ip, 2)[0], ip[9]
    if protocol != PROTOCOL_TCP:
        return
    source, destination = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
    tcp = ip[header_length:total_length]
    source_port, destination_port = struct.unpack_from("!HH", tcp, 0)
    payload = tcp[(tcp[12] >> 4) * 4 :]
    if payload:
        capture.payloads[Stream((source, source_port), (destination, destination_port))] += payload


def is_tls_client_hello(payload: bytes) -> bool:
    """A TLS handshake record (type 22) whose first message is a ClientHello (type 1)."""
    return len(payload) > 5 and payload[0] == 0x16 and payload[1] == 0x03 and payload[5] == 0x01


class Tcpdump:
    """``tcpdump -i lo`` writing every byte of the packets ``bpf_filter`` selects, until stopped."""

    def __init__(self, output: Path, bpf_filter: str) -> None:
        self.output = output
        argv = ["tcpdump", "-i", "lo", "-s", "0", "-U", "-n", "-Z", "root", "-w", str(output), bpf_filter]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "listening on lo, ..." once the capture runs
        if "listening on" not in line:
            self.process.kill()
            pytest.fail(f"tcpdump did not start: {line}{self.process.stderr.read()}")

    def stop(self) -> Capture:
        time.sleep(0.5)  # the last segments of a connection closed just now
        self.process.send_signal(signal.SIGINT)
        self.process.wait(30)
        return read_pcap(self.output)
