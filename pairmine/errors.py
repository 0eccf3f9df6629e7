"""The base of every error that is the user's to fix: the CLI prints its one-line message and exits with 2."""


class UserError(Exception):
    """A config, an input, an output or a model file that cannot be used as given; the message is one line."""


def cause_of(exc: BaseException) -> BaseException:
    """The error itself when a Ray task raised it (Ray's wrapper is an instance of it, but prints a traceback)."""
    return getattr(exc, "cause", None) or exc
