"""`manifest.json`: what a bundle is, how it was made, how good it is, and how to check it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION: Literal[1] = 1

# Version names become directory names and Redis key parts: keep them boring.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

ItemEncoding = Literal["int8", "int4", "fp16", "fp32", "pq4"]


class FileInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Golden(BaseModel):
    """One input sequence (item indices, left-padded, length max_len) and the user vector the
    pipeline measured for it with the exact `model.onnx` in this bundle."""

    model_config = ConfigDict(extra="forbid")

    input: list[int]
    output: list[float]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = FORMAT_VERSION
    model_version: str = Field(pattern=VERSION_PATTERN)
    created_at: datetime
    dim: int = Field(ge=1)
    max_len: int = Field(ge=1)
    n_items: int = Field(ge=1, description="catalog size, padding row excluded")
    item_encoding: ItemEncoding
    onnx_input: str = "item_seq"
    onnx_output: str = "user_vec"
    architecture: dict[str, Any] = Field(default_factory=dict)
    recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, FileInfo] = Field(default_factory=dict)
    golden: list[Golden] = Field(default_factory=list)
    golden_atol: float = Field(default=1e-3, gt=0)
