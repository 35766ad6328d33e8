"""The tasks package's exceptions.

    TaskError (ValueError)        a task spec, an option or an output the task cannot read; names which
    └── ShapeError                tasks/shapes.py: a shape no bucket takes, or unreadable `--shapes` text

A pure package with no boundary of its own: each user maps TaskError at its boundary (the compiler
to CompileError, the agent to ModelLoadError or a policy error, the hub's servicer to a gRPC status).
"""

from __future__ import annotations


class TaskError(ValueError):
    """A task spec or output that cannot be used as stated; the message names the field or shape."""
