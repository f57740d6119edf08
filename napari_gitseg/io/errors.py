"""Errors raised for bad input: each names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class GitsegInputError(ValueError):
    """A file or folder that cannot be read as asked; ``path`` names it, ``problem`` says why."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
