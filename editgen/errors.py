"""Errors a user can cause. The CLI maps every EditGenError to one line and exit code 2;
the server maps them to a 4xx with `code`. Internal invariants use assert instead."""


class EditGenError(Exception):
    """Base for user-facing errors; `code` is machine-readable."""

    code = "editgen_error"


class InvalidRequestError(EditGenError, ValueError):
    """A request option or prompt is out of range or malformed."""

    code = "invalid_request"


class WindowError(InvalidRequestError):
    """A long-form window length or context out of range."""

    code = "invalid_window"


class TooLongError(InvalidRequestError):
    """A song longer than the configured maximum."""

    code = "too_long"


class AudioTooLongError(TooLongError):
    """An audio file longer than the configured maximum."""

    code = "audio_too_long"


class CheckpointError(EditGenError):
    """A model checkpoint is missing, corrupt or unreachable."""

    code = "bad_checkpoint"


class AudioError(EditGenError):
    """An audio file cannot be read, is silent, or does not fit the request."""

    code = "bad_audio"


class ExportDirError(EditGenError):
    """An exported engine directory is incomplete or from another version."""

    code = "bad_export_dir"


class OutputPathError(EditGenError):
    """An output path cannot be written."""

    code = "bad_output_path"


def first_line(exc: BaseException) -> str:
    """A library exception's first line (or its type name): enough for a one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
