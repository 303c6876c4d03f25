"""A request's life in the engine: one agent program, turn after turn, as an explicit state machine.

::

    WAITING ──admit──▶ PREFILLING ──context done──▶ DECODING ──last token──▶ FINISHED
       ▲  ▲                 │  ▲                        │
       │  └──preempt────────┘  │ (preserved, or swapped back in: prefill the tool's return)
       │                       │                        ▼  (turn ends in a tool call)
       │              PAUSED_PRESERVED ◀──────── strategy chosen ──▶ PAUSED_SWAPPED
       │                       │ (released under pressure)                 │ tool returns
       └──tool returns── PAUSED_DISCARDED ◀──────────────────────── RESUMING_SWAPPED ──swap in──▶ PREFILLING
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from lamps_agent.predictors.base import Prediction
from lamps_agent.program import Program, Segment


class KVStrategy(enum.Enum):
    """What happens to a request's KV cache while its agent waits on a tool."""

    PRESERVE = "preserve"  # keep the blocks in GPU memory
    DISCARD = "discard"  # free them; recompute the context when the tool returns
    SWAP = "swap"  # copy to host memory, free the GPU blocks, copy back on return


class RequestState(enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    PAUSED_PRESERVED = "paused_preserved"
    PAUSED_SWAPPED = "paused_swapped"
    PAUSED_DISCARDED = "paused_discarded"
    RESUMING_SWAPPED = "resuming_swapped"
    FINISHED = "finished"


S = RequestState
_TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    S.WAITING: frozenset({S.PREFILLING}),
    S.PREFILLING: frozenset({S.PREFILLING, S.DECODING, S.WAITING}),
    S.DECODING: frozenset(
        {
            S.DECODING,
            S.WAITING,
            S.FINISHED,
            S.PAUSED_PRESERVED,
            S.PAUSED_SWAPPED,
            S.PAUSED_DISCARDED,
        }
    ),
    S.PAUSED_PRESERVED: frozenset({S.PREFILLING, S.PAUSED_SWAPPED, S.PAUSED_DISCARDED}),
    # → discarded: the session moved to another replica of a fleet; the host copy is dropped.
    S.PAUSED_SWAPPED: frozenset({S.RESUMING_SWAPPED, S.PAUSED_DISCARDED}),
    S.PAUSED_DISCARDED: frozenset({S.WAITING}),
    S.RESUMING_SWAPPED: frozenset({S.PREFILLING}),
    S.FINISHED: frozenset(),
}
PAUSED_STATES = frozenset({S.PAUSED_PRESERVED, S.PAUSED_SWAPPED, S.PAUSED_DISCARDED})


class IllegalTransition(RuntimeError):
    pass


@dataclass(slots=True, eq=False)
class Request:
    """One agent program inside the engine.  ``kv_tokens`` counts tokens whose KV exists: as in
    vLLM, a sampled token has none until the next step feeds it back, so a decoding request holds
    KV for its prompt and all but its last generated token."""

    request_id: int
    program: Program
    arrival_time: float
    state: RequestState = RequestState.WAITING
    seg_index: int = 0
    kv_tokens: int = 0  # tokens with KV computed for the current context
    generated: int = 0  # tokens generated in the current segment
    # leading context tokens the engine has had (computed, or sampled): prefilling below this
    # is recomputation
    seen_tokens: int = 0
    gpu_blocks: int = 0
    host_blocks: int = 0
    strategy: KVStrategy | None = None  # planned handling of the coming tool call
    prediction: Prediction | None = None  # the policy's prediction of the current turn
    tool_started_at: float = 0.0
    tool_returns_at: float = 0.0
    queue_key: tuple[float, ...] = ()
    enqueued_at: float = 0.0
    enqueued_iteration: int = 0
    scheduled_iteration: int = -1  # the last iteration that advanced this request
    admitted_seq: int = 0  # when it last entered the running set (the scheduler's count)
    arrival_seq: int = 0  # when its current turn became schedulable (the scheduler's count)
    priority: int = 0  # the client's priority, honoured where the engine schedules by it
    policy_tag: int = 0  # free slots for a policy's own bookkeeping (a type, a stage index, a rank)
    policy_rank: float = 0.0
    # metrics
    first_token_time: float | None = None
    finish_time: float | None = None
    max_queue_wait: float = 0.0
    recomputed_tokens: int = 0
    swapped_out_tokens: int = 0
    preemptions: int = 0
    history: list[RequestState] = field(default_factory=list)

    # -- the program's current turn -------------------------------------------------------
    @property
    def segment(self) -> Segment:
        return self.program.segments[self.seg_index]

    @property
    def context_target(self) -> int:
        """Tokens that must have KV before the next token can be generated: the prompt plus
        what this turn already generated (non-zero after a recompute preemption)."""
        return self.segment.prompt_tokens + self.generated

    @property
    def remaining_prefill(self) -> int:
        return max(self.context_target - self.kv_tokens, 0)

    @property
    def is_last_segment(self) -> bool:
        return self.seg_index == len(self.program.segments) - 1

    @property
    def is_paused(self) -> bool:
        return self.state in PAUSED_STATES

    def move_to(self, new: RequestState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise IllegalTransition(
                f"request {self.request_id}: {self.state.value} -> {new.value} is not allowed"
            )
        self.state = new
        self.history.append(new)

    def start_next_segment(self) -> None:
        """Advance to the next turn once its tool returned; the context grows by the return."""
        self.seg_index += 1
        self.generated = 0
        self.strategy = None
        self.prediction = None
