"""The Hydra configuration tree of ``python -m nas.search`` and friends, shipped with the package as data.

Config groups mirror the packages (``search_space``, ``controller``, ``reward``, ``trainer``, ``dataset``,
``latency``, ``evaluator``, ``logger``, ``experiment``); ``mnas_common.paths.config_dir()`` finds this directory in a
checkout and in an installed package alike.
"""
