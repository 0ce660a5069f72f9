"""Sira's kernel: plugin registry, service registry, message bus and resource scheduler."""
from __future__ import annotations

API_VERSION = 1
