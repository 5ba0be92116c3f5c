"""Embedders: a name picks a backbone, its pooling and its weights; see ``registry``."""

from .registry import ModelSpec, create_embedder, list_models, register, resolve
from .timm import TimmEmbedder

__all__ = ["ModelSpec", "TimmEmbedder", "create_embedder", "list_models", "register", "resolve"]
