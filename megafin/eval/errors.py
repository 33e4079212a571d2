"""The one error of evaluation input."""


class EvalError(Exception):
    """Bad input to an evaluation: one line naming the file (and line) at fault; the CLI exits 2."""
