"""Helpers that every layer of the project shares (``search_spaces``, ``controllers``, ``rewards``, ``latency``,
``nas``). It imports nothing of the project, so any package may import it without breaking the layering:
``search_spaces`` <- ``controllers``/``rewards`` <- ``latency`` <- ``nas``, each importing only those below it.
"""
