"""Errors the CLI maps to one-line messages and exit codes."""

from __future__ import annotations


class ConceptforgeError(Exception):
    """A failure with a one-sentence message for the user."""

    exit_code = 1


class InputError(ConceptforgeError):
    """Bad input from the user: a usage or input error (exit code 2)."""

    exit_code = 2


class ProjectBusyError(InputError):
    """Another `learn` holds the project's lock."""


class CheckpointError(InputError):
    """A run's checkpoint file cannot be read safely (damaged, cut short or from an older version)."""


class TrainingDiverged(ConceptforgeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
