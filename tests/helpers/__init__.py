"""Helpers shared by several test files (not tests themselves).

The test suite runs with ``--import-mode=importlib``, which puts nothing on ``sys.path``; a test file
that uses these helpers adds ``tests/`` to it first (see ``tests/helpers/distribution.py``).
"""
