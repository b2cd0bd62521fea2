"""Event-file writing and reading for the training side: `as_writer` adapts tensorboardX, torch and tf.summary
writers to the one `Writer` protocol the Bridge uses; `read_scalars` reads any run back. Never imports tensorboard."""

from bidviz.writers.adapters import HParamValue, Writer, as_writer
from bidviz.writers.reader import read_events, read_scalars

__all__ = ["HParamValue", "Writer", "as_writer", "read_events", "read_scalars"]
