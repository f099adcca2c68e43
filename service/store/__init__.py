"""Versioned model store: manifests, aliases, verification and the registry of served models."""
from .manifest import Manifest, sha256_file
from .registry import ModelRegistry, ServedModel
from .store import ModelSpec, ModelStore

__all__ = ["Manifest", "ModelRegistry", "ModelSpec", "ModelStore", "ServedModel", "sha256_file"]
