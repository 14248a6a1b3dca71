"""The one exception type of the precompute stage.

Every problem a user can cause (unknown model or SAE, width or hook mismatch, empty corpus,
a layer outside the model, no disk space, no network) is raised as a ``PrecomputeError``
whose message is one or two plain sentences saying what is wrong and what to do. The CLI
prints the message and exits; it never shows a stack trace for these.
"""


class PrecomputeError(Exception):
    """A precompute input or environment problem, with a message meant for the user."""


class ModelError(PrecomputeError):
    """The language model cannot be loaded or does not have the requested hook."""


class CorpusError(PrecomputeError):
    """The corpus is missing, empty or unreadable."""


class SAEError(PrecomputeError):
    """The SAE cannot be loaded, or does not fit the model's hook."""
