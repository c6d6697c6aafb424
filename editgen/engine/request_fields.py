"""One declaration of the fields a request is made of.

The frozen dataclasses that validate a request (GenerationOptions, EditSpec) declare
each field with `option(...)`: its help, the kind of value it takes, its choices, and
its name outside Python. The CLI's flags (editgen.cli.common.add_request_args), the
server's JSON bodies and multipart forms (editgen.server.schemas) and the README's table
(`python -m editgen.engine.request_fields`) are all made from it, so a new field is one
edit. Framework-free: no argparse or pydantic here.

Kinds of value, and how each is written on a command line / in a form / in JSON:
    number, integer, text     as themselves
    switch                    a bare flag (--greedy) / true or false
    choice                    one of `choices`
    word_numbers              WORD=C, repeatable (--word guitar=1.5) / {"guitar": 1.5}
    word_windows              WORD=F or WORD=START:END, repeatable / {"guitar": "0.2:0.6"}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

from editgen.errors import InvalidRequestError

KINDS = ("number", "integer", "text", "switch", "choice", "word_numbers", "word_windows")


@dataclasses.dataclass(frozen=True)
class Option:
    help: str  # one line; the default is shown by each surface itself
    kind: str
    choices: tuple[str, ...] = ()
    name: str | None = None  # the API field and the flag's stem (--name), if not the attribute's
    item: str | None = None  # word maps: the repeated flag / form field (--word, --window)
    metavar: str | None = None
    aliases: tuple[str, ...] = ()  # further CLI flags

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        assert (self.kind == "choice") == bool(self.choices), (self.kind, self.choices)
        assert (self.kind in ("word_numbers", "word_windows")) == (self.item is not None), (self.kind, self.item)


@dataclasses.dataclass(frozen=True)
class RequestField:
    """A declared field as the surfaces see it."""

    attribute: str  # the dataclass field
    option: Option
    default: Any  # dataclasses.MISSING when required

    @property
    def name(self) -> str:
        """Its name in the API (JSON, forms) and, with dashes, on the command line."""
        return self.option.name or self.attribute

    @property
    def flag(self) -> str:
        return "--" + (self.option.item or self.name).replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def option(default=dataclasses.MISSING, *, help: str, kind: str, choices=(), name=None, item=None,
           metavar=None, aliases=()) -> Any:
    """A dataclass field declared as a request option. A dict default becomes an empty
    dict factory (word maps)."""
    meta = {"option": Option(help, kind, tuple(choices), name, item, metavar, tuple(aliases))}
    if isinstance(default, dict):
        assert not default, "word maps default to empty"
        return dataclasses.field(default_factory=dict, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def request_fields(cls) -> tuple[RequestField, ...]:
    """The declared fields of a request dataclass, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("option")
        if opt is None:
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(RequestField(f.name, opt, default))
    return tuple(out)


def field_named(cls, name: str) -> RequestField:
    for f in request_fields(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def parse_word_items(items: list[str], field: RequestField) -> dict[str, Any]:
    """["guitar=1.5", ...] -> {"guitar": 1.5} (word_numbers) or {"guitar": "0.2:0.6"}
    (word_windows, values checked by the spec). One parser for the CLI's repeated flags and
    the server's repeated form fields."""
    flag, numbers = field.flag, field.option.kind == "word_numbers"
    shape = "WORD=C" if numbers else "WORD=F or WORD=START:END"
    out: dict[str, Any] = {}
    for item in items:
        word, sep, raw = item.rpartition("=")
        word, raw = word.strip(), raw.strip()
        value: Any = raw
        if numbers:
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
        if not sep or not word or not raw or (numbers and not math.isfinite(value)):
            raise InvalidRequestError(f"{flag} {item!r} must look like {shape}, e.g. {flag} guitar=0.5")
        if word in out:
            raise InvalidRequestError(f"{flag}: word {word!r} is given twice")
        out[word] = value
    return out


def markdown_table(*classes) -> str:
    """The README's table of request fields: flag, API field, default, what it is."""
    rows = ["| CLI flag | API field | default | what |", "|---|---|---|---|"]
    for cls in classes:
        for f in request_fields(cls):
            default = "required" if f.required else ("none" if f.default in (None, {}) else f"`{f.default}`")
            what = f.option.help + (f" ({', '.join(f.option.choices)})" if f.option.choices else "")
            api = f"`{f.name}`" + (f" (form: `{f.option.item}`, repeated)" if f.option.item else "")
            rows.append(f"| `{f.flag}` | {api} | {default} | {what} |")
    return "\n".join(rows)


def _documented() -> Iterator:
    from editgen.engine.edit.spec import EditSpec
    from editgen.engine.options import GenerationOptions

    yield GenerationOptions
    yield EditSpec


if __name__ == "__main__":
    print(markdown_table(*_documented()))
