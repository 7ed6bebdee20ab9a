"""The base of every error a user can act on, and how the command line prints an error.

An error whose message is the whole story (it names the file, the option or the value, and what is
wrong with it) derives from :class:`OneLineError`; ``vpnext`` prints such a message as it is, on one
line, without the class name. Any other exception is printed as ``ClassName: message``.

Errors raised in a DataLoader worker reach the main process re-built by torch from a text that
holds the worker's whole traceback (``Caught DatasetError in DataLoader worker process 0.
Original Traceback (most recent call last): ...``). :class:`OneLineError` recognises that text and
keeps the original message, so ``vpnext validate`` with loader workers prints the same line as
without them; the worker's traceback stays available in :attr:`OneLineError.worker_traceback`.

This module imports nothing but the standard library: every layer may use it.
"""

from __future__ import annotations

import re

__all__ = ["OneLineError", "UserError", "describe", "original_message"]

#: The text torch's ``ExceptionWrapper.reraise`` passes to the exception type it re-raises.
_REraised = re.compile(r"\ACaught \w+ in [^\n]*\.\nOriginal Traceback \(most recent call last\):\n")


def original_message(text: str, type_name: str) -> str | None:
    """The message of a ``type_name`` error inside a worker's re-raise text, else ``None``.

    Args:
        text: What torch passes to the exception type when it re-raises a worker's error.
        type_name: The class name of the error (``DatasetError``); the last line of the traceback
            that starts with it, module-qualified or not, begins the message.
    """
    if not _REraised.match(text):
        return None
    pattern = re.compile(rf"^(?:[\w.]+\.)?{re.escape(type_name)}: ?", re.MULTILINE)
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    return text[matches[-1].end() :].rstrip("\n")


class OneLineError(Exception):
    """An error whose message is complete and printed as it is (see the module docstring).

    Attributes:
        worker_traceback: The worker's traceback text when torch re-raised this error from a
            DataLoader worker, else ``None``.
    """

    worker_traceback: str | None = None

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            original = original_message(args[0], type(self).__name__)
            if original is not None:
                self.worker_traceback = args[0]
                args = (original,)
        super().__init__(*args)


class UserError(OneLineError):
    """A problem with the command line, a config or a file that the user can fix."""


def describe(err: BaseException) -> str:
    """One line for an exception: a :class:`OneLineError`'s (or a missing file's) message as it
    is, any other type with its class name in front."""
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (OneLineError, FileNotFoundError)):
        return message
    return f"{type(err).__name__}: {message}"
