"""A bad setting as one line that names the variable the operator set, and never a secret's value."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import AliasChoices, BaseModel, ValidationError

# Settings whose values never appear in an error line (a password or a secret may be in them).
SECRET_SETTINGS = frozenset({"ADMIN_TOKENS", "MATRIX_AS_TOKEN", "MATRIX_HS_TOKEN"})


class SettingsError(Exception):
    """A setting is invalid; the message is one line that names the variable."""


def variable_name(name: str, model: type[BaseModel], environ: Mapping[str, str] = os.environ) -> str:
    """The variable the operator set for a setting known under several names (ROOMS or CHANNELS)."""
    for field_name, field in model.model_fields.items():
        choices = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else []
        names = [str(choice).upper() for choice in choices]
        if name.upper() in names or name == field_name:
            present = {key.upper() for key in environ}
            return next(
                (choice for choice in names if choice in present), names[0] if names else name.upper()
            )
    return name.upper()


def describe_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """Name the environment variable and the problem, in one line."""
    error = exc.errors(include_url=False)[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"]:
        variable = variable_name(str(error["loc"][0]), model)
        value = error.get("input")
        # Broker URLs may carry a password, ADMIN_TOKENS holds secrets.
        secret = variable.endswith("_URL") or variable in SECRET_SETTINGS
        plain = isinstance(value, str | int | float) and not secret and error["type"] != "missing"
        shown = f" (got {value!r})" if plain else ""
        return f"invalid setting {variable}: {message}{shown}"
    return f"invalid settings: {message}"
