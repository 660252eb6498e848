"""The message types only the 3.x dialect has: a position, a Processing model, a Processing script.

QChat and the QField plugin share these over `/channel/{c}/ws`; QTribu and the 2.x dialect know
none of them, so they are accepted on channel sockets only and delivered to channel sockets only.
A model or a script is a file the receiving QGIS saves (a script under the Processing scripts
folder, where QGIS runs it): its name must be a plain file name, and a script is refused unless
the instance allows scripts at all.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gischat.protocol.messages import (
    MAX_CRS_AUTHID_LENGTH,
    MAX_CRS_WKT_LENGTH,
    MAX_LAYER_NAME_LENGTH,
    AuthoredMessage,
    Avatar,
    Number,
    check_file_name,
    check_length,
    limits_of,
)
from gischat.protocol.refusals import SCRIPTS_OFF_REASON, Uncompliant


class PositionMessage(AuthoredMessage):
    """Where the author stands (QField's GNSS position), in the CRS it names."""

    type: Literal["position"] = "position"
    author: str
    avatar: Avatar = None
    crs_wkt: Annotated[str, Field(max_length=MAX_CRS_WKT_LENGTH)]
    crs_authid: Annotated[str, Field(max_length=MAX_CRS_AUTHID_LENGTH)]
    x: Number
    y: Number


class ModelMessage(AuthoredMessage):
    """A QGIS Processing graphical model (a `.model3` XML document)."""

    type: Literal["model"] = "model"
    author: str
    avatar: Avatar = None
    model_name: Annotated[str, Field(min_length=1, max_length=MAX_LAYER_NAME_LENGTH)]
    model_group: Annotated[str, Field(max_length=MAX_LAYER_NAME_LENGTH)] | None = None
    raw_xml: str

    @field_validator("model_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_file_name(value, "model_name")

    @field_validator("raw_xml")
    @classmethod
    def _check_xml(cls, value: str, info: ValidationInfo) -> str:
        return check_length(value, limits_of(info).max_model_length, "raw_xml")


class ScriptMessage(AuthoredMessage):
    """A QGIS Processing Python script: code the receiving QGIS may run, hence off by default."""

    type: Literal["script"] = "script"
    author: str
    avatar: Avatar = None
    name: Annotated[str, Field(min_length=1, max_length=MAX_LAYER_NAME_LENGTH)]
    raw_pycode: str

    @model_validator(mode="before")
    @classmethod
    def _check_allowed(cls, data: Any, info: ValidationInfo) -> Any:
        """Refused before anything else is looked at: no reason to read a script we never relay."""
        if not limits_of(info).allow_scripts:
            raise Uncompliant(SCRIPTS_OFF_REASON)
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_file_name(value, "name")

    @field_validator("raw_pycode")
    @classmethod
    def _check_code(cls, value: str, info: ValidationInfo) -> str:
        return check_length(value, limits_of(info).max_script_length, "raw_pycode")
