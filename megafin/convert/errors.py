"""The one error type of the converters: a single line naming the file or key at fault (CLI exit code 2)."""
from __future__ import annotations

EXIT_CONVERT_ERROR = 2


class ConvertError(Exception):
    """Bad input or a refused operation. Raised before anything is written to the output path."""
