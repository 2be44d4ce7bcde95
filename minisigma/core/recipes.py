"""Recipes: YAML files validated with pydantic.

Every section is a `Section` (unknown keys are errors). `load_recipe` turns any validation error
into one line that names the file and the dotted key, e.g.
``recipes/curation/x.yaml: crawl.max_body_bytes: Input should be a valid integer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.paths import REPO_ROOT


class Section(BaseModel):
    """Base for every recipe section: unknown keys fail, values are validated, no coercion surprises."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


M = TypeVar("M", bound=BaseModel)


def _local(value: str) -> str:
    if storage.is_url(value):
        raise ValueError(f"{value}: a URL is not supported here, give a local path (README: On object storage)")
    return value


# A recipe field naming a local file or directory: a storage URL (s3://, gs:// ...) is a one-line error
# instead of a local folder named "s3:" (for the stages that work on local files only: training, evaluation).
LocalPath = Annotated[str, AfterValidator(_local)]



def project_path(path: str | Path) -> Path:
    """A path as given if it exists (relative to the working directory), else the same path inside the
    project checkout (so recipes/ and manifests/ names work from any directory)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    q = REPO_ROOT / p
    return q if q.exists() else p


def format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<top>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")  # our own validators' messages read as they are
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{extra}"


def parse_recipe(data: dict, model: type[M], source: str = "<recipe>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(source, e)) from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: line {line}: invalid UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping at the top level")
    return data


def load_recipe(path: str | Path, model: type[M]) -> M:
    """Load and validate a YAML recipe; raise UserError with a one-line message on any problem."""
    return parse_recipe(load_yaml(path), model, str(path))
