"""Framework integrations: each module attaches a Bridge to one framework's own hook system."""
