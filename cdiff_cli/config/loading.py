"""Loading a recipe: YAML, ``a.b=value`` overrides, unknown keys with "did you mean ...?", and
one-line validation errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from cdiff_cli.errors import RecipeError, first_line
from cdiff_cli.fileio import require_file

from cdiff_cli.config.recipe import Recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``a.b=value`` overrides and validate.

    Relative data paths stay relative to the working directory (as users type them).
    Raises :class:`RecipeError` with one line naming the key on any problem.
    """
    path = Path(path)
    require_file(path, "recipe", "a YAML file", RecipeError)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path} is not valid YAML: {first_line(e)}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw, source=str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    check_unknown_keys(raw, Recipe, "")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {_format_validation_error(e)}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like key.path=value")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise RecipeError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, parts[: i + 1], create=True)
    last = parts[-1]
    if isinstance(node, list):
        idx = _index(node, last, parts)
        node[idx] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {key}: {'.'.join(parts[:-1])} is not a section")


def _child(node: Any, part: str, path: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise RecipeError(f"override {'.'.join(path)}: {'.'.join(path[:-1])} is not a section")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _index(node: list[Any], part: str, path: list[str]) -> int:
    try:
        idx = int(part)
        node[idx]
    except (ValueError, IndexError):
        raise RecipeError(f"override {'.'.join(path)}: {part!r} is not an index below {len(node)}") from None
    return idx


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``Model``, ``list[Model]``, ``Model | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def check_unknown_keys(raw: Any, model: type[BaseModel], prefix: str) -> None:
    """Fail on the first key that no section defines, suggesting the closest real key."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            raise RecipeError(f"unknown recipe key {where!r}{hint}")
        annotation = fields[key].annotation
        sub = _model_of(annotation)
        if sub is None:
            continue
        if get_origin(annotation) is list and isinstance(value, list):
            for i, item in enumerate(value):
                check_unknown_keys(item, sub, f"{where}.{i}.")
        else:
            check_unknown_keys(value, sub, f"{where}.")


def _format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{shown}{more}" if loc else f"{msg}{more}"


def save_resolved(recipe: Recipe, out_dir: Path) -> Path:
    """Write the resolved recipe next to a run's outputs (``recipe.yaml``)."""
    from cdiff_cli.fileio import write_text

    path = out_dir / "recipe.yaml"
    write_text(path, recipe.to_yaml())
    return path
