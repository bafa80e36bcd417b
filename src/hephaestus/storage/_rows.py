"""The row a SQL store keeps per instance: its indexed columns and the encoded snapshot."""

from __future__ import annotations

from .._core._codec import encode_instance
from .._core._model import Instance

Row = tuple[str, str, int, str, int, float, float | None, bytes]
"""(id, workflow, version, status, revision, updated_at, next_deadline, snapshot)."""


def instance_row(instance: Instance, *, store: str, forbid_nul: bool = False) -> Row:
    """Encode ``instance`` into its row (in the caller's thread: bad input fails here).

    ``next_deadline`` is the earliest timer's deadline, None without timers.

    Raises:
        ValueError: for an id or workflow name ``store`` cannot hold as text:
            lone surrogates, or a NUL character when ``forbid_nul``.
    """
    for what, text in (("id", instance.id), ("workflow name", instance.workflow)):
        if forbid_nul and "\x00" in text:
            raise ValueError(
                f"the instance's {what} {text!r} contains a NUL character, which {store} "
                "text cannot hold: remove it"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the instance's {what} {text!r} is not valid Unicode: {exc}"
            ) from None
    deadline = min((t.deadline for t in instance.timers), default=None)
    return (
        instance.id,
        instance.workflow,
        instance.version,
        instance.status.value,
        instance.revision,
        instance.updated_at,
        deadline,
        encode_instance(instance),
    )
