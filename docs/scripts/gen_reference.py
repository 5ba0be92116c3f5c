"""Write the generated reference pages while the site builds (mkdocs-gen-files runs this file).

Nothing here is copied by hand, so the pages cannot drift from the code:

- ``reference/cli.md``: every command, subcommand and option, walked from ``lookalike.cli.build_parser()``
  (argparse; the walk reads the parser's actions as sphinx-argparse and mkdocs-rich-argparse do);
- ``reference/rest.md``: every route, parameter, body and answer, from the app's OpenAPI schema
  (``create_app(...).openapi()``, FastAPI), and the schema itself as ``reference/openapi.json``;
- ``reference/store-schema.md``: the tables of a catalog's database, from the stores' own ``SCHEMA`` strings.

Run by hand (``python docs/scripts/gen_reference.py OUT``) it writes the same pages under OUT, to read without
MkDocs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

# The parser's defaults read these; the reference shows what a user gets with none of them set.
for name in ("LOOKALIKE_CATALOG", "LOOKALIKE_RUNTIME"):
    os.environ.pop(name, None)
os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal's width: the same width on every machine

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def _cell(text: object) -> str:
    """Text fit for one cell of a Markdown table."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": prog}
    return text


def _anchor(path: list[str]) -> str:
    return "-".join(path) if path else "lookalike"


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[list[str], argparse.ArgumentParser,
                                                                               str]]:
    """Every parser under ``parser``, depth first, with its command path and one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield [*path, name], sub, helps.get(name, "")
                yield from _walk(sub, [*path, name])


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            flags = ", ".join(f"`{s}`" for s in action.option_strings)
            if action.nargs != 0:
                flags += f" `{action.metavar or action.dest.upper()}`"
        else:
            flags = f"`{action.metavar or action.dest}`"
        if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
            flags += "<br>" + " \\| ".join(f"`{c}`" for c in action.choices)
        default = ""
        if action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
            default = f"`{action.default}`"
        extra = " (repeatable)" if isinstance(action, argparse._AppendAction) else ""
        extra += " (required)" if action.required and action.option_strings else ""
        rows.append(f"| {flags} | {_cell(_help(action, parser.prog))}{extra} | {default} |")
    if not rows:
        return []
    return ["| option | what | default |", "| --- | --- | --- |", *rows, ""]


def cli_page() -> str:
    from lookalike.cli import build_parser

    root = build_parser()
    commands = list(_walk(root, []))
    lines = ["# Command line", "",
             "Generated from `lookalike.cli.build_parser()` when the site is built: every command and option "
             "of this version. `lookalike COMMAND --help` prints the same.", "",
             "| command | what |", "| --- | --- |"]
    for path, _, help_text in commands:
        lines.append(f"| [`lookalike {' '.join(path)}`](#{_anchor(path)}) | {_cell(help_text)} |")
    lines += ["", "## lookalike {#lookalike}", "", root.description or "", "",
              "```text", root.format_usage().strip(), "```", "", *_options_table(root), root.epilog or "", ""]
    for path, parser, help_text in commands:
        depth = "#" * min(2 + len(path) - 1, 4)
        lines += [f"{depth} lookalike {' '.join(path)} {{#{_anchor(path)}}}", ""]
        description = parser.description or help_text
        if description:
            lines += [description, ""]
        lines += ["```text", parser.format_usage().strip(), "```", ""]
        lines += _options_table(parser)
        if parser.epilog:
            lines += [parser.epilog, ""]
    return "\n".join(lines).rstrip() + "\n"


def _schema_name(schema: dict) -> str:
    """A JSON schema in a few words: a type, a reference, an array of them, a union."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    if schema.get("type") == "object" and "additionalProperties" in schema:
        inner = schema["additionalProperties"]
        return f"object of {_schema_name(inner) if isinstance(inner, dict) else 'any'}"
    kind = schema.get("type", "any")
    if schema.get("format") == "binary":
        kind = "file"
    return str(kind)


def _fields(schema: dict) -> list[str]:
    props = schema.get("properties", {})
    if not props:
        return []
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default | what |", "| --- | --- | --- | --- | --- |"]
    for name, prop in props.items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        rows.append(f"| `{name}` | {_cell(_schema_name(prop))} | {'yes' if name in required else ''} | {default} | "
                    f"{_cell(prop.get('description', ''))} |")
    return [*rows, ""]


def openapi_schema() -> dict:
    from lookalike.api import ServeSettings, create_app

    # The catalog is opened at startup only, so building the app and its schema needs none.
    return create_app(ServeSettings(catalog="shop.lk")).openapi()


def rest_page(schema: dict) -> str:
    info = schema["info"]
    lines = ["# REST API", "",
             f"Generated from the app's OpenAPI schema (`create_app(...).openapi()`, OpenAPI {schema['openapi']}) "
             "when the site is built. A running server shows the same at `/docs` (Swagger UI) and `/redoc`, and "
             "serves the schema at `/openapi.json`; this version's is [openapi.json](openapi.json).", "",
             f"**{info['title']} {info['version']}**: {info.get('description', '')}", "",
             "| method | path | what |", "| --- | --- | --- |"]
    operations = [(path, method, op) for path, methods in schema["paths"].items() for method, op in methods.items()]
    for path, method, op in operations:
        lines.append(f"| `{method.upper()}` | [`{path}`](#{op['operationId']}) | {_cell(op.get('summary', ''))} |")
    lines.append("")
    components = schema.get("components", {}).get("schemas", {})
    for path, method, op in operations:
        lines += [f"## `{method.upper()} {path}` {{#{op['operationId']}}}", ""]
        if op.get("description"):
            lines += [op["description"].strip(), ""]
        params = op.get("parameters", [])
        if params:
            lines += ["| parameter | in | type | required | default | what |", "| --- | --- | --- | --- | --- | --- |"]
            for p in params:
                s = p.get("schema", {})
                default = f"`{json.dumps(s['default'])}`" if "default" in s else ""
                lines.append(f"| `{p['name']}` | {p['in']} | {_cell(_schema_name(s))} | "
                             f"{'yes' if p.get('required') else ''} | {default} | {_cell(p.get('description', ''))} |")
            lines.append("")
        body = op.get("requestBody")
        if body:
            for media, content in body.get("content", {}).items():
                ref = content.get("schema", {})
                lines += [f"Body (`{media}`{', required' if body.get('required') else ''}):", ""]
                target = components.get(ref["$ref"].rsplit("/", 1)[-1], {}) if "$ref" in ref else ref
                lines += _fields(target) or [_schema_name(ref), ""]
        lines += ["| answer | what | body |", "| --- | --- | --- |"]
        for code, response in op.get("responses", {}).items():
            content = response.get("content", {})
            body_text = ", ".join(f"`{m}`" + (f": {_schema_name(c['schema'])}" if c.get("schema") else "")
                                  for m, c in content.items())
            lines.append(f"| {code} | {_cell(response.get('description', ''))} | {_cell(body_text)} |")
        lines.append("")
    lines += ["## Schemas", ""]
    for name, comp in components.items():
        lines += [f"### {name} {{#{name.lower()}}}", ""]
        if comp.get("description"):
            lines += [comp["description"].strip(), ""]
        lines += _fields(comp) or [f"{_schema_name(comp)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def store_schema_page() -> str:
    from lookalike.store import postgres, sqlite

    return "\n".join([
        "# The catalog's tables", "",
        "Generated from the stores' own schema (`lookalike.store.sqlite.SCHEMA`, `lookalike.store.postgres.SCHEMA`) "
        "when the site is built. What the tables mean, and the format's versions: "
        "[the catalog on disk](catalog-format.md).", "",
        "## SQLite (`shop.lk/catalog.sqlite`)", "", "```sql", sqlite.SCHEMA.strip(), "```", "",
        f"## PostgreSQL (schema `lookalike` by default; `store_format` {postgres.FORMAT})", "",
        "```sql", postgres.SCHEMA.strip(), "```", ""])


def write_all(open_file: Callable[[str], object]) -> None:
    schema = openapi_schema()
    pages = {"reference/cli.md": cli_page(), "reference/rest.md": rest_page(schema),
             "reference/openapi.json": json.dumps(schema, indent=2) + "\n",
             "reference/store-schema.md": store_schema_page()}
    for name, text in pages.items():
        with open_file(name) as f:
            f.write(text)


if __name__ == "__main__":  # by hand: python docs/scripts/gen_reference.py OUT
    out = Path(sys.argv[1])

    def _open(name: str):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        return open(out / name, "w")

    write_all(_open)
else:
    import mkdocs_gen_files

    write_all(lambda name: mkdocs_gen_files.open(name, "w"))
