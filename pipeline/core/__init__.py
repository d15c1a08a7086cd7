"""The shared core, the bottom layer: typed params, table schemas and atomic writers, sharded
resumable execution, image decoding, mask format, logging, devices, downloads.

Imports nothing else from ``pipeline``.
"""
