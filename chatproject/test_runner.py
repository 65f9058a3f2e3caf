"""`python manage.py test` runs the same pytest suite as `pytest`."""

from __future__ import annotations

import sys


class PytestRunner:
    def __init__(self, verbosity: int = 1, failfast: bool = False, keepdb: bool = False, **kwargs: object) -> None:
        self.verbosity = verbosity
        self.failfast = failfast
        self.keepdb = keepdb

    @classmethod
    def add_arguments(cls, parser: object) -> None:
        parser.add_argument("--keepdb", action="store_true")  # type: ignore[attr-defined]

    def run_tests(self, test_labels: list[str], **kwargs: object) -> int:
        import pytest

        argv: list[str] = []
        if self.verbosity == 0:
            argv.append("-q")
        elif self.verbosity > 1:
            argv.append("-v")
        if self.failfast:
            argv.append("-x")
        if self.keepdb:
            argv.append("--reuse-db")
        argv.extend(test_labels)
        code = pytest.main(argv)
        sys.exit(int(code))
