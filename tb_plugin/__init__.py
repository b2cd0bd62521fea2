"""The BIDViz tab in TensorBoard and the control-plane HTTP core.

`loader` is the `tensorboard_plugins` entry point and imports nothing risky; `plugin` is the werkzeug shell that
TensorBoard serves; `core` and `security` are framework-free and shared with the standalone server.
"""
