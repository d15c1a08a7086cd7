"""Model loading, above ``core``: each real model's loader (hub id or local file, the very code
that loads the released weights) and, next to it, the builder of its tiny random twin.

Imports only ``pipeline.core``.
"""
