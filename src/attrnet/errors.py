"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class AttrnetError(Exception):
    """A problem the user can act on: bad input, a bad config, a missing file.

    The message says what was wrong, where, and what would be right.
    """
