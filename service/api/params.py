"""FastAPI ``Path`` declarations for model names, aliases and versions: 422 ``invalid_parameter`` at the
edge, documented in the OpenAPI schema, with the patterns of :mod:`service.names`."""
from __future__ import annotations

from fastapi import Path

from ..names import ALIAS, ALIAS_RULE, MAX_VERSION, MODEL_NAME, MODEL_NAME_RULE

NamePath = Path(pattern=MODEL_NAME, max_length=64, description=f"model name: {MODEL_NAME_RULE}")
AliasPath = Path(pattern=ALIAS, max_length=64, description=f"alias: {ALIAS_RULE}")
VersionPath = Path(ge=1, le=MAX_VERSION, description="model version")
