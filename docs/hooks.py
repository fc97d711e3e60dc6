"""MkDocs hook: the CLI and configuration references are generated at build time from the code, so they cannot drift.

`<!-- visionflow:cli -->` in a page becomes the Typer app's commands (help, usage, options, defaults);
`<!-- visionflow:config -->` becomes components.config's pydantic models (field, type, default, description).
tests/test_docs.py calls the generators directly.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the hook runs from mkdocs' process: make the repository importable

CLI_MARKER = "<!-- visionflow:cli -->"
CONFIG_MARKER = "<!-- visionflow:config -->"


def _cell(text: object) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def iter_commands(group: Any, path: tuple[str, ...] = ("visionflow",)) -> typing.Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the command tree Typer builds, depth first, sub-commands sorted by name."""
    yield path, group
    for name in sorted(getattr(group, "commands", {}) or {}):
        yield from iter_commands(group.commands[name], (*path, name))


def _param_row(param: Any, ctx: Any) -> str:
    record = param.get_help_record(ctx)
    if param.param_type_name == "argument":
        name = f"`{(param.metavar or param.name or '').upper()}`"
    else:
        name = " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    kind = "flag" if getattr(param, "is_flag", False) else f"`{param.display_type(ctx)}`"
    default = param.default
    shown = "" if callable(default) or default is None or default == [] or default == () else f"`{default}`"
    help_text = getattr(param, "help", None) or (record[1] if record else "")
    return f"| {name} | {kind} | {shown} | {'yes' if param.required else ''} | {_cell(help_text)} |"


def cli_reference_markdown() -> str:
    """The `visionflow` CLI as Markdown: one section per command, walked from `typer.main.get_command(app)`."""
    import typer
    import typer.main

    from flows.cli import app

    out: list[str] = []
    for path, cmd in iter_commands(typer.main.get_command(app)):
        name = " ".join(path)
        out.append(f"{'#' * min(len(path) + 1, 6)} `{name}`\n")
        if cmd.help:
            out.append(cmd.help.strip() + "\n")
        ctx = typer.Context(cmd, info_name=name)
        out.append(f"```text\n{cmd.get_usage(ctx)}\n```\n")
        if getattr(cmd, "commands", None):
            out.append("Sub-commands: " + ", ".join(f"`{s}`" for s in sorted(cmd.commands)) + ".\n")
        params = [p for p in cmd.get_params(ctx) if "--help" not in getattr(p, "opts", [])]
        if params:
            out.append("| parameter | type | default | required | help |\n|---|---|---|---|---|")
            out.extend(_param_row(p, ctx) for p in params)
            out.append("")
    return "\n".join(out)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = repr(annotation)
    for prefix in ("typing.", "components.config.", "pydantic.main."):
        text = text.replace(prefix, "")
    return text.replace("NoneType", "None")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        return "(every registered family)" if field.annotation.__name__ == "ModelsConfig" else "(computed)"
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`"


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_nested_models(arg))
    return found


def _model_section(title: str, model: type[BaseModel]) -> tuple[str, list[tuple[str, type[BaseModel]]]]:
    doc = (model.__doc__ or "").strip()
    lines = [f"## `{title}`\n", f"*{model.__name__}*" + (f" — {' '.join(doc.split())}" if doc and not doc.startswith("Usage docs") else "") + "\n"]
    children: list[tuple[str, type[BaseModel]]] = []
    if getattr(model, "__pydantic_root_model__", False):
        return "\n".join(lines), children
    lines.append("| field | type | default | description |\n|---|---|---|---|")
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        lines.append(f"| `{name}` | `{_cell(_type_name(field.annotation))}` | {_cell(_default(field))} | {_cell(field.description or '')} |")
        for sub in _nested_models(field.annotation):
            if not getattr(sub, "__pydantic_root_model__", False):
                children.append((f"{title}.{name}", sub))
    lines.append("")
    return "\n".join(lines), children


def config_reference_markdown() -> str:
    """components.config's models as Markdown: every section of params.yaml, each field's type, default and description."""
    from components import config as c

    sections: list[tuple[str, type[BaseModel]]] = [("params.yaml", c.Config)]
    # `models:` maps a family key to a block validated by its kind's model
    family_kinds = [("models.<classifier>", c.ClassifierFamily), ("models.<generator>", c.GanFamily), ("models.<fusion>", c.DecisionFusionFamily)]
    out: list[str] = []
    seen: set[str] = set()
    queue = sections + family_kinds
    while queue:
        title, model = queue.pop(0)
        if title in seen:
            continue
        seen.add(title)
        text, children = _model_section(title.removeprefix("params.yaml."), model)
        out.append(text)
        queue.extend((t.removeprefix("params.yaml."), m) for t, m in children)
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: fill the generated references into their pages."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference_markdown())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference_markdown())
    return markdown
