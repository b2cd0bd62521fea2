"""BIDViz: a TensorBoard-compatible log-plus-control bridge for training runs.

Re-exports are lazy (module `__getattr__`) so that `import bidviz.protocol`, the CLI and the TensorBoard
plugin never pull in the bridge, torch or tensorboardX by accident.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("tensorboard-bidviz")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["Bridge", "BridgeBusyError", "ProtocolError", "__version__", "connect"]

_LAZY = {
    "Bridge": "bidviz.bridge",
    "BridgeBusyError": "bidviz.channel",
    "ProtocolError": "bidviz.protocol",
    "connect": "bidviz.client",
}

if TYPE_CHECKING:
    from bidviz.bridge import Bridge
    from bidviz.channel import BridgeBusyError
    from bidviz.client import connect
    from bidviz.protocol import ProtocolError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bidviz' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
