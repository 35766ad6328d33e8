"""The one exception of the tasks package.

TaskError (ValueError)   a task spec, an option or an output the task cannot read; the message says which
"""

from __future__ import annotations


class TaskError(ValueError):
    """A task spec or output that cannot be used as stated; the message names the field or shape."""
