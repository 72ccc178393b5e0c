"""Render the record tables of SPEC.md from the declarations.

SPEC.md embeds the output of ``python -m cptimage.spec`` between the markers
``<!-- records:begin -->`` and ``<!-- records:end -->``; tests/test_spec.py fails when the
two differ, so the normative text and the code cannot drift apart.
"""

from __future__ import annotations

from . import records as R
from .fields import REGISTRY, FixedSpec, VarSpec, fields_of

BEGIN = "<!-- records:begin -->"
END = "<!-- records:end -->"


def _type_name(spec: FixedSpec | VarSpec) -> str:
    if isinstance(spec, FixedSpec):
        name = spec.wire
        if spec.enum is not None:
            name += f" ({spec.enum.__name__})"
        if spec.flags is not None:
            name += f" ({spec.flags.__name__})"
        return name
    if spec.kind == "items":
        assert spec.item is not None
        return f"items of {spec.item.__name__}"
    return spec.kind


def _field_rows(cls: type) -> list[str]:
    rows = []
    for name, spec in fields_of(cls):
        part = "fixed" if isinstance(spec, FixedSpec) else "var"
        rows.append(f"| {name} | {_type_name(spec)} | {part} |")
    return rows


def render() -> str:
    out = [BEGIN, ""]
    out.append("### Section types")
    out.append("")
    out.append("| value | name |")
    out.append("|---|---|")
    for t in R.SectionType:
        out.append(f"| 0x{t.value:02x} | {t.name} |")
    out.append("")
    out.append("### Record tags")
    out.append("")
    out.append("| tag | record | section |")
    out.append("|---|---|---|")
    for tag in sorted(REGISTRY):
        sec = R.section_of_tag(tag)
        sname = R.SectionType(sec).name if sec else "(container)"
        out.append(f"| 0x{tag:04x} | {REGISTRY[tag].name} | {sname} |")
    for tag, name in sorted(R.RETIRED_TAGS.items()):
        out.append(f"| 0x{tag:04x} | {name} (retired: reserved, never reused) | |")
    out.append("")
    items_seen: list[type] = []
    for tag in sorted(REGISTRY):
        codec = REGISTRY[tag]
        out.append(f"#### {codec.name} (0x{tag:04x})")
        out.append("")
        doc = (codec.cls.__doc__ or "").strip().splitlines()
        if doc and not doc[0].startswith(codec.name + "("):
            out.append(doc[0])
            out.append("")
        out.append("| field | type | part |")
        out.append("|---|---|---|")
        out.extend(_field_rows(codec.cls))
        out.append("")
        for _, spec in fields_of(codec.cls):
            if isinstance(spec, VarSpec) and spec.item is not None and spec.item not in items_seen:
                items_seen.append(spec.item)
    for it in items_seen:
        out.append(f"#### item {it.__name__}")
        out.append("")
        out.append("| field | type | part |")
        out.append("|---|---|---|")
        out.extend(_field_rows(it))
        out.append("")
    out.append("### Enumerations and flags")
    out.append("")
    enums = [
        v
        for v in vars(R).values()
        if isinstance(v, type)
        and issubclass(v, (R.enum.IntEnum, R.enum.IntFlag))
        and v.__module__ == R.__name__
    ]
    for e in enums:
        vals = ", ".join(
            f"{m.name}={m.value:#x}" if issubclass(e, R.enum.IntFlag) else f"{m.name}={m.value}"
            for m in e
        )
        out.append(f"- {e.__name__}: {vals}")
    out.append("")
    out.append(END)
    return "\n".join(out)


def embedded(spec_text: str) -> str:
    start = spec_text.index(BEGIN)
    end = spec_text.index(END) + len(END)
    return spec_text[start:end]


if __name__ == "__main__":
    print(render())


__all__ = ["BEGIN", "END", "embedded", "render"]
