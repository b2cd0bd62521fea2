"""Event files for the training side: `EventWriter` writes standard TensorBoard event files fast, `read_scalars` and
`read_events` read any run back (tensorboardX, torch, TensorFlow/JAX or ours), `as_writer` adapts tensorboardX, torch
and tf.summary writers to the one `Writer` protocol the Bridge uses. Never imports tensorboard, tensorboardX or torch
(the adapter for a user's writer uses that writer's own package)."""

from bidviz.writers.adapters import HParamValue, Writer, as_writer
from bidviz.writers.event_writer import EventWriter
from bidviz.writers.reader import read_events, read_scalars
from bidviz.writers.records import CRC32C_IMPLEMENTATION

__all__ = ["CRC32C_IMPLEMENTATION", "EventWriter", "HParamValue", "Writer", "as_writer", "read_events", "read_scalars"]
