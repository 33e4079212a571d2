"""The one exception a bad config raises: its message is a single line naming the key."""


class ConfigError(ValueError):
    """A recipe or override that cannot run. str(err) is one line: `key: what was expected`."""
