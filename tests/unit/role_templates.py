"""Render a role's templates and expressions with Ansible's own templar, as a play would.

No target host is needed: the role's defaults and vars are loaded as Ansible loads them (trusted), and the
test supplies what the play and earlier tasks would know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template


def role_variables(role: Path, play: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    loader = DataLoader()
    variables: dict[str, Any] = {}
    for layer in ("defaults", "vars"):
        variables.update(loader.load_from_file(str(role / layer / "main.yml"), trusted_as_template=True))
    variables.update(role_path=str(role), **play)
    variables.update(overrides)
    return variables


def evaluate(variables: dict[str, Any], expression: str) -> Any:
    return Templar(loader=DataLoader(), variables=variables).template(
        trust_as_template(f"{{{{ {expression} }}}}")
    )


def render(variables: dict[str, Any], template: Path) -> str:
    """Render a template as the template modules do (trim_blocks on)."""
    templar = Templar(loader=DataLoader(), variables=variables)
    rendered = templar.template(
        trust_as_template(template.read_text()), escape_backslashes=False, overrides={"trim_blocks": True}
    )
    assert isinstance(rendered, str)
    return rendered


def render_text(variables: dict[str, Any], text: object) -> str:
    """A task's templated string (an assert's message, a loop item's field) as the task would see it."""
    templar = Templar(loader=DataLoader(), variables=variables)
    return str(templar.template(trust_as_template(str(text))))
