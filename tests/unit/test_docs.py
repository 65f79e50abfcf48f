"""The documentation cannot drift silently from the code: what README.md and docs/ name must exist.

Checked in every page: relative links (and their #anchors) lead somewhere; every `han-worker <command>` and
`han-control-plane <command>`, with the flags written after it, is one the CLI has; every playbook and
repository path exists; every role or playbook variable is one the roles or playbooks define; every
`make <target>` is in the Makefile. README.md stays under 10 KB with its diagram, and docs/benchmarks.md is
as its generator wrote it. Each checker is also run on a broken sample below, to show that it can fail.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from han_worker import client
from han_worker.cli import build_control_plane_parser, build_worker_parser
from tests.bench import docs_page
from tests.conftest import REPO

README = REPO / "README.md"
PAGES = [
    README,
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "tests" / "README.md",
    REPO / "reports" / "README.md",
]
README_LIMIT = 10_240

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
COMMAND = re.compile(r"\b(han-worker|han-control-plane) ([a-z][a-z-]*(?:/[a-z][a-z-]*)*)(.*)")
COMMAND_END = re.compile(r"\s#|;|\||&&")
MAKE = re.compile(r"\bmake ([a-z][a-z-]*)")
# Repository paths a page may name.
PATH_ROOTS = (
    "han_worker/",
    "playbooks/",
    "roles/",
    "inventories/",
    "scripts/",
    "tests/",
    "plugins/",
    "docs/",
    "reports/",
    ".ci/",
    "monitoring/",
)
BARE_PLAYBOOK = re.compile(r"[\w-]+\.yml")
ROLES = sorted(
    path.name for path in (REPO / "roles").iterdir() if (path / "meta" / "argument_specs.yml").is_file()
)
VARIABLE = re.compile(r"(?<![\w./-])((?:" + "|".join([*ROLES, "drill"]) + r")_\w+)(?![\w./-])")


def pages() -> list[Path]:
    return [page for page in PAGES if page.is_file()]


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


# -- what a page says -----------------------------------------------------------------------------------


def code_pieces(text: str) -> Iterator[str]:
    """Each line of every fenced block, then every inline code span outside them."""
    for match in FENCE.finditer(text):
        yield from match.group(2).splitlines()
    yield from INLINE_CODE.findall(FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(heading) for heading in HEADING.findall(FENCE.sub("", path.read_text()))}


# -- the checkers: each returns the problems it finds -------------------------------------------------------


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _hash, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            problems.append(f"link {target}: {path} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"link {target}: no heading #{anchor} in {path.name}")
    return problems


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices)


PROGRAMS = {
    "han-worker": subcommands(build_worker_parser()),
    "han-control-plane": subcommands(build_control_plane_parser()),
}


def _flags(rest: str) -> list[str]:
    rest = COMMAND_END.split(rest, maxsplit=1)[0]
    return [
        token.strip("[](),`'\"").split("=")[0] for token in rest.split() if token.lstrip("[").startswith("--")
    ]


def command_problems(text: str) -> list[str]:
    problems = []
    for piece in code_pieces(text):
        for program, names, rest in COMMAND.findall(piece):
            for name in names.split("/"):
                parser = PROGRAMS[program].get(name)
                if parser is None:
                    problems.append(
                        f"{program} {name}: no such command (known: {', '.join(PROGRAMS[program])})"
                    )
                    continue
                problems += [
                    f"{program} {name} {flag}: no such flag"
                    for flag in _flags(rest)
                    if flag not in parser._option_string_actions
                ]
    return problems


def path_problems(text: str) -> list[str]:
    problems = []
    for piece in code_pieces(text):
        for word in piece.split():
            token = word.strip("`'\"(),:;").split("=")[-1]
            if any(char in token for char in "<>*{}$~"):
                continue  # a pattern, not a path
            if token.startswith(PATH_ROOTS) and not (REPO / token).exists():
                problems.append(f"{token}: no such file or directory")
            elif BARE_PLAYBOOK.fullmatch(token) and not any(
                (directory / token).exists() for directory in (REPO / "playbooks", REPO)
            ):
                problems.append(f"{token}: no such playbook")
    return problems


def role_options() -> set[str]:
    names: set[str] = set()
    for role in ROLES:
        specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())[
            "argument_specs"
        ]
        for entry_point in specs.values():
            names.update(entry_point.get("options") or {})
    return names


def playbook_variables() -> set[str]:
    """The extra-vars the playbooks read with a default, e.g. ``control_plane_hosts | default('pegasus')``."""
    found: set[str] = set()
    for playbook in (REPO / "playbooks").rglob("*.yml"):
        found.update(re.findall(r"\b(\w+)\s*\|\s*default\(", playbook.read_text()))
    return found


KNOWN_VARIABLES = role_options() | playbook_variables()


def variable_problems(text: str) -> list[str]:
    named = {name for piece in code_pieces(text) for name in VARIABLE.findall(piece)}
    return [
        f"{name}: neither a role option (roles/*/meta/argument_specs.yml) nor a playbook variable"
        for name in sorted(named - KNOWN_VARIABLES)
    ]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))


def make_problems(text: str) -> list[str]:
    targets = make_targets()
    named = {target for piece in code_pieces(text) for target in MAKE.findall(piece)}
    return [f"make {target}: no such target in the Makefile" for target in sorted(named - targets)]


# -- the pages ------------------------------------------------------------------------------------------


def test_the_readme_is_read_in_five_minutes() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move detail to docs/ (limit {README_LIMIT})"


def test_the_readme_has_its_diagram() -> None:
    assert any(info.strip() == "mermaid" for info, _body in FENCE.findall(README.read_text()))


def test_the_readme_names_the_two_commands() -> None:
    blocks = [body for info, body in FENCE.findall(README.read_text()) if info.strip() == "bash"]
    assert "make demo" in blocks[0]
    assert "make test" in blocks[0]


def test_the_readme_snippet_parses_and_calls_the_client_as_it_is() -> None:
    snippet = next(body for info, body in FENCE.findall(README.read_text()) if info.strip() == "python")
    calls = {
        node.attr
        for node in ast.walk(ast.parse(snippet))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "client"
    }
    assert calls >= {"connect", "submit", "wait"}
    assert all(callable(getattr(client, name, None)) for name in calls), calls
    imports = [node for node in ast.parse(snippet).body if isinstance(node, ast.Import | ast.ImportFrom)]
    exec(compile(ast.Module(body=imports, type_ignores=[]), "README.md", "exec"), {})


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_every_link_leads_somewhere(page: Path) -> None:
    assert link_problems(page, page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_every_command_and_flag_named_is_real(page: Path) -> None:
    assert command_problems(page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_every_playbook_and_path_named_exists(page: Path) -> None:
    assert path_problems(page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_every_variable_named_is_defined(page: Path) -> None:
    assert variable_problems(page.read_text()) == []


@pytest.mark.parametrize("page", pages(), ids=page_id)
def test_every_make_target_named_exists(page: Path) -> None:
    assert make_problems(page.read_text()) == []


def test_the_benchmarks_page_is_as_its_generator_wrote_it() -> None:
    page = REPO / "docs" / "benchmarks.md"
    text = page.read_text()
    docs_page.check_stamp(text, str(page))
    if "**Not yet generated" in text:  # no report needed to check it against the generator of today
        assert text == docs_page.render(None), f"regenerate it: {docs_page.COMMAND} --pending"


# -- each checker fails when it should ---------------------------------------------------------------------


def test_a_broken_link_or_anchor_is_found() -> None:
    text = "[a](docs/nowhere.md), [b](docs/drill.md#no-such-heading), [c](docs/drill.md#the-nine-scenarios)"
    assert link_problems(README, text) == [
        f"link docs/nowhere.md: {REPO / 'docs' / 'nowhere.md'} does not exist",
        "link docs/drill.md#no-such-heading: no heading #no-such-heading in drill.md",
    ]


def test_an_unknown_command_or_flag_is_found() -> None:
    text = "`han-worker sumbit`, `han-worker wait/stat`, `han-control-plane rotate --retire --later`"
    known = ", ".join(PROGRAMS["han-worker"])  # the commands, in the parser's order
    assert "endpoints, run, submit, wait, status, jobs, show, fetch" in known
    assert command_problems(text) == [
        f"han-worker sumbit: no such command (known: {known})",
        f"han-worker stat: no such command (known: {known})",
        "han-control-plane rotate --later: no such flag",
    ]


def test_a_missing_playbook_or_path_is_found() -> None:
    text = "```bash\nansible-playbook playbooks/sites.yml\n```\n`deploy.yml`, `roles/nothing/`, `reports/bench-<time>.json`"
    assert path_problems(text) == [
        "playbooks/sites.yml: no such file or directory",
        "deploy.yml: no such playbook",
        "roles/nothing/: no such file or directory",
    ]


def test_an_unknown_variable_is_found() -> None:
    text = "`pegasus_worker_queue`, `-e drill_scenario=1`, `control_plane_hosts`, `pegasus_worker_queues`"
    assert variable_problems(text) == [
        "drill_scenario: neither a role option (roles/*/meta/argument_specs.yml) nor a playbook variable",
        "pegasus_worker_queue: neither a role option (roles/*/meta/argument_specs.yml) nor a playbook variable",
    ]


def test_an_unknown_make_target_is_found() -> None:
    assert make_problems("`make demo`, `make benchmarks`") == [
        "make benchmarks: no such target in the Makefile"
    ]
