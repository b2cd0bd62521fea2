"""The `tensorboard_plugins` entry point. Importing this module must never stop TensorBoard from starting: it
imports only TensorBoard's own `base_plugin`, and any failure to load the real plugin is logged and shown in the
BIDViz tab instead."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from tensorboard.plugins import base_plugin

logger = logging.getLogger(__name__)


class BIDVizLoader(base_plugin.TBLoader):
    """Adds `--bidviz_allowed_hosts` and loads `BIDVizPlugin`, or a plugin that shows why it could not."""

    def define_flags(self, parser: Any) -> None:
        parser.add_argument(
            "--bidviz_allowed_hosts",
            metavar="HOSTS",
            type=str,
            default="",
            help="BIDViz: comma-separated host names (besides localhost, 127.0.0.1 and [::1]) under which the "
            "BIDViz tab may be reached and may send commands to training, e.g. when TensorBoard is opened as "
            "http://myworkstation:6006. Requests with any other Host header are refused (DNS-rebinding defence).",
        )

    def load(self, context: base_plugin.TBContext) -> base_plugin.TBPlugin:
        try:
            from bidviz.tb_plugin.plugin import BIDVizPlugin

            return BIDVizPlugin(context)
        except Exception as e:
            logger.error("BIDViz failed to load; its tab shows the error", exc_info=True)
            return FailedPlugin(context, e)


class FailedPlugin(base_plugin.TBPlugin):
    """Stands in for BIDViz when it cannot load: the tab still appears and says what went wrong and what to do."""

    plugin_name = "bidviz"

    def __init__(self, context: base_plugin.TBContext, error: BaseException) -> None:
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.message = (
            f"BIDViz could not load in this TensorBoard: {detail}. Reinstall it in TensorBoard's environment "
            "(pip install 'tensorboard-bidviz[plugin]') and restart TensorBoard; the log has the traceback."
        )

    def get_plugin_apps(self) -> dict[str, Any]:
        return {"/static/index.js": self._index, "/*": self._error}

    def is_active(self) -> bool:
        return True

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/static/index.js", tab_name="BIDViz")

    def _index(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        text = json.dumps(self.message)
        body = (
            "export function render() {\n"
            "  const p = document.createElement('pre');\n"
            "  p.dataset.testid = 'load-error';\n"
            "  p.style.cssText = 'font: 14px Roboto, sans-serif; color: #c62828; margin: 24px';\n"
            f"  p.textContent = {text};\n"
            "  document.body.appendChild(p);\n"
            "}\n"
        ).encode()
        start_response("200 OK", [("Content-Type", "text/javascript"), ("X-Content-Type-Options", "nosniff")])
        return [body]

    def _error(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")],
        )
        return [json.dumps({"error": self.message}).encode()]
