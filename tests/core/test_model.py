import math

import pytest

from lamps_agent.kv_memory import KVMemory, OutOfBlocks
from lamps_agent.presets import GPTJ_6B, LLAMA3_8B, VICUNA_13B
from lamps_agent.program import Program, Segment
from lamps_agent.request import IllegalTransition, Request, RequestState
from tests.core.conftest import make_program


def test_kv_bytes_per_token_match_the_model_shapes() -> None:
    assert GPTJ_6B.kv_bytes_per_token == 458_752
    assert LLAMA3_8B.kv_bytes_per_token == 131_072
    assert VICUNA_13B.kv_bytes_per_token == 819_200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt_tokens": 0, "output_tokens": 5},
        {"prompt_tokens": 5, "output_tokens": 0},
        {"prompt_tokens": 5, "output_tokens": 5, "tool": "t", "tool_duration": -1.0},
        {"prompt_tokens": 5, "output_tokens": 5, "tool": "t", "tool_duration": math.nan},
        {"prompt_tokens": 5, "output_tokens": 5, "tool": "t", "tool_duration": math.inf},
        {"prompt_tokens": 5, "output_tokens": 5, "tool": ""},
        {"prompt_tokens": 5, "output_tokens": 5, "tool_duration": 2.0},
        {"prompt_tokens": 5.5, "output_tokens": 5},
        {"prompt_tokens": 10**9, "output_tokens": 5},
    ],
)
def test_segment_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Segment(**kwargs)  # type: ignore[arg-type]


def test_program_requires_consistent_contexts() -> None:
    first = Segment(
        prompt_tokens=10, output_tokens=5, tool="t", tool_duration=1.0, returned_tokens=3
    )
    with pytest.raises(ValueError, match="expected 18"):
        Program(
            program_id="p", agent="a", segments=(first, Segment(prompt_tokens=17, output_tokens=2))
        )
    ok = Program(
        program_id="p", agent="a", segments=(first, Segment(prompt_tokens=18, output_tokens=2))
    )
    assert ok.total_output_tokens == 7 and ok.num_tool_calls == 1 and ok.total_tool_time == 1.0


def test_last_segment_cannot_call_a_tool() -> None:
    seg = Segment(prompt_tokens=10, output_tokens=5, tool="t", tool_duration=1.0)
    with pytest.raises(ValueError, match="last segment"):
        Program(program_id="p", agent="a", segments=(seg,))


def test_request_state_machine_rejects_illegal_moves() -> None:
    req = Request(
        request_id=0, program=make_program("p", [(3, 1.0, 2), (2, 0, 0)]), arrival_time=0.0
    )
    req.move_to(RequestState.PREFILLING)
    req.move_to(RequestState.DECODING)
    req.move_to(RequestState.PAUSED_SWAPPED)
    with pytest.raises(IllegalTransition):
        req.move_to(RequestState.PREFILLING)  # a swapped request must be swapped in first
    req.move_to(RequestState.RESUMING_SWAPPED)
    req.move_to(RequestState.PREFILLING)
    assert req.history[-1] is RequestState.PREFILLING


def test_kv_memory_is_exact_to_the_block() -> None:
    mem = KVMemory(num_gpu_blocks=4, num_host_blocks=2, block_size=16)
    assert mem.blocks_for(1) == 1 and mem.blocks_for(16) == 1 and mem.blocks_for(17) == 2
    mem.allocate(3)
    assert mem.peak_gpu_blocks == 3 and not mem.can_allocate(2)
    with pytest.raises(OutOfBlocks):
        mem.allocate(2)
    mem.swap_out(2)
    assert mem.free_gpu_blocks == 3 and mem.free_host_blocks == 0
    mem.swap_in(2, 2)
    assert mem.free_host_blocks == 2 and mem.free_gpu_blocks == 1
    mem.free(3)
    with pytest.raises(RuntimeError, match="double free"):
        mem.free(1)
