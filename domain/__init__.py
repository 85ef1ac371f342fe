"""Shared domain vocabulary: validated value types, configuration, storage helpers."""
