"""The adapter tests need the ``langchain`` extra: each module starts with
``pytest.importorskip("langchain")``, so without it they are reported as skipped, with the reason."""
