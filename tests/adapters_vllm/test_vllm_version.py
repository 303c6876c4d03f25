"""The plug-in names the vLLM versions it supports and refuses others at start-up (no vLLM
needed: the check reads a version string)."""

from __future__ import annotations

import pytest

from adapters.vllm.config import SUPPORTED_VLLM, UnsupportedVllm, check_vllm_version


@pytest.mark.parametrize("version", ["0.32.0", "0.32.1", "0.33.0", "0.33.2rc1"])
def test_supported_versions_start(version: str) -> None:
    check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.31.9", "0.34.0", "1.0.0", "0.3.2"])
def test_other_versions_are_refused_naming_the_supported_ones(version: str) -> None:
    with pytest.raises(UnsupportedVllm) as err:
        check_vllm_version(version)
    message = str(err.value)
    assert version in message and all(f"{v}.x" in message for v in SUPPORTED_VLLM)
