"""``han_worker.control_plane.hardening.listen``: ``ss`` output parsed, listeners judged by the address policy."""

from __future__ import annotations

import pytest

from han_worker.control_plane.hardening.listen import (
    AddressPolicy,
    Listener,
    listener_rows,
    make_policy,
    parse_ss,
)
from han_worker.control_plane.hardening.processes import process_tree
from han_worker.control_plane.hardening.report import FAIL, PASS, WARN, HardeningInputError, Row

# `ss -l -n -p -t -u` on the testbed (as root), with its header; the IPv6 and UDP lines are ss's own formats.
SS_OUTPUT = """\
Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess
tcp   LISTEN 0      4096      127.0.0.10:37433      0.0.0.0:*    users:(("weed",pid=7929,fd=89))
tcp   LISTEN 0      4096       127.0.0.1:37433      0.0.0.0:*    users:(("weed",pid=7929,fd=90))
tcp   LISTEN 0      4096       127.0.0.1:48355      0.0.0.0:*    users:(("weed",pid=7929,fd=8))
tcp   LISTEN 0      511       127.0.0.10:39965      0.0.0.0:*    users:(("valkey-server",pid=7928,fd=8))
tcp   LISTEN 0      200       127.0.0.10:33955      0.0.0.0:*    users:(("postgres",pid=7927,fd=6))
tcp   LISTEN 0      4096         0.0.0.0:6817       0.0.0.0:*    users:(("slurmctld",pid=5370,fd=10))
tcp   LISTEN 0      128          0.0.0.0:2024       0.0.0.0:*
tcp   LISTEN 0      4096            [::]:6817          [::]:*    users:(("slurmctld",pid=5370,fd=11))
tcp   LISTEN 0      511                *:8080             *:*    users:(("python3",pid=900,fd=3),("python3",pid=901,fd=3))
udp   UNCONN 0      0      127.0.0.53%lo:53         0.0.0.0:*    users:(("resolved",pid=77,fd=12))
"""

POLICY = make_policy([], ["127.0.0.10/32"], allow_any=False)
PUBLISHED = {33955: "postgres", 39965: "redis", 37433: "s3"}


def test_parse_ss_reads_addresses_ports_and_processes() -> None:
    listeners = parse_ss(SS_OUTPUT)
    assert len(listeners) == 10
    assert listeners[0] == Listener("tcp", "127.0.0.10", 37433, (7929,), ("weed",))
    assert Listener("tcp", "0.0.0.0", 2024, (), ()) in listeners
    assert Listener("tcp", "::", 6817, (5370,), ("slurmctld",)) in listeners
    assert Listener("tcp", "*", 8080, (900, 901), ("python3",)) in listeners
    assert Listener("udp", "127.0.0.53", 53, (77,), ("resolved",)) in listeners


def test_parse_ss_without_header_or_netid_column() -> None:
    text = 'LISTEN 0 128 127.0.0.20:2222 0.0.0.0:* users:(("sshd",pid=5440,fd=3))\n\n'
    assert parse_ss(text) == [Listener("tcp", "127.0.0.20", 2222, (5440,), ("sshd",))]


def _rows_for(address: str, port: int, policy: AddressPolicy = POLICY) -> list[Row]:
    return listener_rows([Listener("tcp", address, port, (1,), ("weed",))], PUBLISHED, policy)


def test_listeners_on_the_private_address_pass_and_loopback_is_one_row_for_the_open_check() -> None:
    ours = [item for item in parse_ss(SS_OUTPUT) if item.pids == (7929,) or item.port in PUBLISHED]
    rows = listener_rows(ours, PUBLISHED, POLICY)
    assert [row.result for row in rows] == [PASS, PASS, PASS, PASS]
    assert rows[0].target == "tcp 127.0.0.10:33955"
    assert "postgres" in rows[0].detail
    assert (
        "internal, on the node's loopback (each must refuse without credentials: 'open')" in rows[-1].detail
    )
    assert "37433 (weed)" in rows[-1].detail
    assert "48355 (weed)" in rows[-1].detail


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "*"])
def test_a_bind_to_every_interface_fails_and_names_the_setting(address: str) -> None:
    (row,) = _rows_for(address, 39965)
    assert row.result == FAIL
    assert "redis" in row.detail
    assert "every interface" in row.detail
    assert "harden_check_allow_any_address" in row.detail


def test_every_interface_is_a_warning_when_the_operator_allows_it() -> None:
    (row,) = _rows_for("0.0.0.0", 39965, make_policy(["127.0.0.10"], [], allow_any=True))
    assert row.result == WARN
    assert "allowed" in row.detail


@pytest.mark.parametrize("address", ["127.0.0.20", "192.0.2.7", "::1"])
def test_another_address_fails(address: str) -> None:
    (row,) = _rows_for(address, 40000)
    assert row.result == FAIL
    assert "neither the private address (127.0.0.10/32) nor 127.0.0.1" in row.detail
    assert "not in the endpoints file" in row.detail


def test_an_explicit_bind_address_is_the_private_address() -> None:
    policy = make_policy(["127.0.0.20"], [], allow_any=False)
    assert _rows_for("127.0.0.20", 16379, policy)[0].result == PASS
    assert _rows_for("127.0.0.21", 16379, policy)[0].result == FAIL


@pytest.mark.parametrize(
    ("addresses", "networks", "message"),
    [
        ([], [], "--bind-address or --bind-network"),
        (["not-an-ip"], [], "--bind-address"),
        ([], ["10.0.0.0/33"], "--bind-network"),
        (["0.0.0.0"], [], "every interface"),
        ([], ["0.0.0.0/0"], "every interface"),
    ],
)
def test_bad_policy_inputs_are_refused(addresses: list[str], networks: list[str], message: str) -> None:
    with pytest.raises(HardeningInputError, match=message):
        make_policy(addresses, networks, allow_any=False)


def test_process_tree_follows_children_only() -> None:
    parents = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert process_tree(10, parents) == {10, 11, 12, 13}
    assert process_tree(99, parents) == {99}
