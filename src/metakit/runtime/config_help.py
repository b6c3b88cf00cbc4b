"""``metakit train --help``: every config field with its type, default and help text.

The fixed sections and the task families' options are documented by their declared fields
(:func:`metakit.options.option`); model and algorithm options by their constructor signature
and the help the class declares (:mod:`.config_options`).
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from ..options import option_rows, type_name
from .config_options import OptionSpec, algorithm_option_specs, model_option_specs

__all__ = ["config_help"]


def _fmt_default(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_default(x) for x in v) + "]"
    return str(v)


def _entry(key: str, type_text: str, default: str, help: str, indent: int = 2) -> str:
    head = " " * indent + f"{key} = {default}   ({type_text})"
    body = textwrap.fill(help or "(no description)", width=96, initial_indent=" " * (indent + 4),
                         subsequent_indent=" " * (indent + 4))
    return head + "\n" + body


def _spec_entry(section: str, spec: OptionSpec) -> str:
    default = "(required)" if spec.required else _fmt_default(spec.default)
    return _entry(f"{section}.{spec.name}", type_name(spec.annotation), default, spec.help, indent=4)


def config_help() -> str:
    """Every config field with its type, default and help (for ``metakit train --help``)."""
    from .. import models
    from ..algorithms import available_algorithms, get_algorithm
    from ..tasks import available_families, get_family
    from .config import SECTIONS, TaskConfig

    out = ["config fields (YAML sections; override any field on the command line with section.key=value):"]
    for name, cls in SECTIONS.items():
        out.append(f"\n{name}: {inspect.getdoc(cls).splitlines()[0]}")
        for fname, type_text, default, help in option_rows(cls):
            if fname != "options":
                out.append(_entry(f"{name}.{fname}", type_text, _fmt_default(default), help))
        if cls is TaskConfig:
            out.append("  task options (task.<option>=value; the options of the family task.family):")
            for fam in available_families():
                family = get_family(fam)
                out.append(f"  {fam}: {family.kind} tasks, scored by {family.metric} "
                           f"({'higher' if family.higher_is_better else 'lower'} is better)")
                for heading, opts in family.option_classes():
                    if heading:
                        out.append(f"    with {heading}:")
                    for oname, type_text, default, help in option_rows(opts):
                        out.append(_entry(f"task.{oname}", type_text, _fmt_default(default), help, indent=4))
    out.append("\nmodel options (model.<option>=value; the keyword arguments of the backbone model.name):")
    for mname in models.available_models():
        out.append(f"  {mname}:")
        for spec in model_option_specs(mname).values():
            out.append(_spec_entry("model", spec))
    out.append("\nalgorithm options (algorithm.<option>=value; the keyword arguments of algorithm.name):")
    for aname in available_algorithms():
        if aname.startswith("_"):
            continue
        out.append(f"  {aname}: solves {' and '.join(get_algorithm(aname).task_kinds)} tasks")
        specs = algorithm_option_specs(aname).values()
        if not specs:
            out.append("      (no options)")
        for spec in specs:
            out.append(_spec_entry("algorithm", spec))
    return "\n".join(out)
