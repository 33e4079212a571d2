"""The one error `megafin distill` reports to a user: a line naming the file/line/flag and what was expected (exit 2)."""


class DistillError(ValueError):
    pass
