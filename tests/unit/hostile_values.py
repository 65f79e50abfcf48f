"""Hypothesis strategies for hostile input, shared by the tests that throw them at every reader and flag.

Each family is something an operator's worst day (or a neighbour) can put where we read: JSON nested past
Python's stack, numbers Python or PostgreSQL cannot hold, text PostgreSQL cannot store, hosts that name
no server or smuggle text, paths no file system accepts. Every value drawn here must be refused.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from han_worker.fields import INT4_MAX, MAX_JSON_DEPTH

# The whole hostile suite stays within ~30 s: few examples per reader or flag, no per-example deadline (the
# first example of a flag pays for imports). Fixtures are per test on purpose: they only set the environment.
HOSTILE = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Python's default (Hypothesis changes sys.getrecursionlimit() while it runs, so it is not read from there).
PYTHON_RECURSION_LIMIT = 1000
UNSTORABLE_CHARACTERS = st.sampled_from(["\x00", "\ud800", "\udfff", "\udcff", "\udc80"])


@st.composite
def unstorable_text(draw: st.DrawFn) -> str:
    """Text with a NUL or a lone surrogate (a byte that was not UTF-8, as Python decodes file names)."""
    before = draw(st.text(max_size=8))
    return before + draw(UNSTORABLE_CHARACTERS) + draw(st.text(max_size=8))


@st.composite
def deep_json(draw: st.DrawFn) -> str:
    """Arrays or objects nested past MAX_JSON_DEPTH, up to several times Python's recursion limit."""
    depth = draw(st.integers(MAX_JSON_DEPTH + 1, 4 * PYTHON_RECURSION_LIMIT))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k": ', "}"), ('[{"k": ', "}]")]))
    return opener * depth + "1" + closer * depth


NON_FINITE_JSON = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    st.integers(309, 100_000).map(lambda exponent: f"1e{exponent}"),
    st.integers(309, 100_000).map(lambda exponent: f"-2.5E+{exponent}"),
)
HUGE_INTEGER_JSON = st.integers(4301, 20_000).map(lambda digits: "9" * digits)
UNSTORABLE_JSON_STRING = unstorable_text().map(json.dumps)  # escaped: "\u0000", "\ud800"

# JSON text refused wherever it appears in a document, whatever the field.
HOSTILE_JSON = st.one_of(deep_json(), NON_FINITE_JSON, HUGE_INTEGER_JSON, UNSTORABLE_JSON_STRING)

# Numbers as flag text: not finite, not numbers, past any bound we hold, digits that are not ASCII.
HOSTILE_NUMBER_TEXT = st.one_of(
    st.sampled_from(
        [
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "1e999",
            "1e308",
            "-1",
            "-0.5",
            "",
            " ",
            "²",
            "٣",
            "0x10",
            "3e6",
            "99999999999",
        ]
    ),
    st.integers(INT4_MAX + 1, 2**80).map(str),
    st.integers(4301, 6000).map(lambda digits: "9" * digits),
    unstorable_text(),
)

HOSTILE_HOSTS = st.one_of(
    st.sampled_from(
        [
            "0.0.0.0",
            "::",
            "0",
            "127.1",
            "0x7f.1",
            "1.2.3",
            "224.0.0.1",
            "ff02::1",
            "a..b",
            ".",
            "host\nname",
            "$(id)",
            "`id`",
            "a b",
            "-leading",
            "fe80::1%eth0",
            "fe80::1%$(id)",
            "fe80::1%a\nb",
            "x" * 64 + ".example",
            "a." * 130,
        ]
    ),
    unstorable_text(),
)

HOSTILE_NETWORKS = st.one_of(
    st.sampled_from(
        [
            "fe80::%eth0/64",
            "fe80::%x\nhost all all 0.0.0.0/0 trust/64",
            "10.0.0.0/33",
            "nonsense",
            "10.0.0.1%x/32",
            "",
            "$(id)/8",
        ]
    ),
    unstorable_text(),
)

# Paths no file system names: a NUL, nothing, or one name past 255 bytes. Each sits under /dev/null, a file,
# so that even a path a bug let through could not be made: a test must never create a state directory.
HOSTILE_PATHS = st.one_of(
    st.just(""),
    unstorable_text().filter(lambda text: "\x00" in text).map(lambda text: "/dev/null/" + text),
    st.integers(256, 600).map(lambda length: "/dev/null/" + "n" * length),
    st.integers(128, 200).map(lambda length: "/dev/null/" + "é" * length + "/x"),
)

# Free text where a name, a kind, a queue, a job id or JSON is expected.
HOSTILE_TEXT = st.one_of(
    unstorable_text(), deep_json(), NON_FINITE_JSON, st.text(min_size=1).map(lambda t: t + "\n")
)
