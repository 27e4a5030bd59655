"""Source readers, one module per dataset, registered by name (see :mod:`.base`); ``list_sources()`` names them.

Importing this package imports every reader module so that :func:`get_source` knows them all.
"""

import importlib
import pkgutil

from lightning_sarclip.data.io import list_formats
from lightning_sarclip.data.sources.base import (
    SOURCES,
    DatasetNotFoundError,
    SARSource,
    SourceFormatError,
    get_source,
    list_sources,
    register_source,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SOURCES", "DatasetNotFoundError", "SARSource", "SourceFormatError", "get_source", "list_formats", "list_sources",
           "register_source"]
