"""The adapter tests need the ``langchain`` extra; without it the folder is skipped whole."""

import importlib.util

if importlib.util.find_spec("langchain") is None:
    collect_ignore_glob = ["test_*.py"]
