"""The page's assets (the tab's ES modules, its style sheet, the vendored uPlot and its license), read once from the
package: only these names are ever served, so no path from a request reaches open(). Shared by both shells."""

from __future__ import annotations

from importlib import resources

__all__ = ["STATIC_TYPES", "static_files"]

STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".txt": "text/plain"}


def static_files() -> dict[str, bytes]:
    root = resources.files("bidviz.tb_plugin").joinpath("static")
    return {
        entry.name: entry.read_bytes()
        for entry in root.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in STATIC_TYPES)
    }
