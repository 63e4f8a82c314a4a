"""Dead letters: an input message a function cannot process goes to its DLQ topic.

The topic is `<input topic>.dlq` (snf.pipeline.names.dlq_topic), partition for
partition. A dead letter is the original value and headers plus headers
saying why, named after Kafka Connect's `__connect.errors.*`:

    snf.errors.topic / .partition / .offset   where the message was
    snf.errors.function                       who gave up on it
    snf.errors.class / .message               why (an exception class, or a
                                              rule: "Untrusted", "Crashed")

`snf dlq PIPELINE FUNCTION` lists them and can replay them into the input.
Dead letters are at least once: a takeover that redoes an event sends its
dead letter again (`snf dlq` shows each source offset once).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ERROR_HEADERS", "DeadLetter", "dead_letter_headers"]

ERROR_PREFIX = "snf.errors."
ERROR_HEADERS = tuple(
    ERROR_PREFIX + n for n in ("topic", "partition", "offset", "function", "class", "message")
)
MAX_MESSAGE = 1024  # characters of the reason kept: it may quote the input


class DeadLetter(Exception):
    """An input message this function will not process; `kind` names the rule."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def dead_letter_headers(
    headers: Sequence[tuple[str, bytes]] | None,
    where: tuple[str, int, int],
    function: str,
    error: BaseException,
) -> list[tuple[str, bytes]]:
    """The original headers (those that are well formed) plus the reason."""
    kept = [
        (k, bytes(v or b""))
        for k, v in (headers or ())
        if isinstance(k, str) and not k.startswith(ERROR_PREFIX)
    ]
    kind = error.kind if isinstance(error, DeadLetter) else type(error).__name__
    topic, partition, offset = where
    values = (topic, str(partition), str(offset), function, kind, str(error)[:MAX_MESSAGE])
    reason = zip(ERROR_HEADERS, values, strict=True)
    return kept + [(name, v.encode("utf-8", "replace")) for name, v in reason]
