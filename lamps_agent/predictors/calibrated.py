"""Hints checked against behaviour: a client's claims are discounted by how far its past claims
were from what its turns then did.

Every prediction that comes from a client (its hints: output length, tool, tool duration) is the
client's word.  The engine sees what each turn really generated and how long each tool really
took, so this wrapper keeps, per session (the program) and per tenant, the log ratio of observed
to claimed over the last ``window`` turns, and how often a claimed final turn called a tool after
all.  While the median ratio stays within a factor ``tolerance`` (and no claimed final turn called
a tool) the claim passes unchanged: an honest client keeps full weight, and an exact predictor
(the oracle) is never changed.  Past it, the claim is replaced by what the client does:

- output tokens: the claim scaled by the median observed / claimed ratio;
- tool duration: the per-tool prior — the duration source's (the tool registry's) estimate where
  it has evidence, else the median of the tool's durations observed here from every tenant —
  not the client's word; without either, the claim scaled by its ratio;
- a claimed final turn from a source whose final claims were false: a tool call with the prior's
  duration and returned tokens.

The session's own record speaks first (one turn of evidence is enough: a lie is systematic); a
session without one is judged by its tenant's, once the tenant has ``min_tenant`` turns or at
once when one of its claimed final turns went on (an engine that learns it only when the
session's next turn arrives says so with :meth:`CalibratedPredictor.refute_final`).  A
session's first turn from a tenant without evidence against it is checked for plausibility: a
claimed output more than ``tolerance`` outside the range the agent's turns with that tool
produced (its last 256, once there are ``min_population``), or a tool duration as far outside the
tool's, is replaced by that population's median.  An honest claim is a draw from the same population and almost never
leaves its range; a claim of 1 token where the agent never wrote fewer than 20 does.

A tenant that has been caught understating in some of its sessions (any of its last ``window``
sessions whose own record shows shorter claims than turns, or a false final) loses the benefit
of the doubt on its new sessions' first turns: a
first claim more favourable than its population's median (a shorter output, a shorter tool) is
ranked as the median.  A lie then buys nothing on the first turn either, where the tenant's
median record, held by its honest majority, would not show it; a tenant never caught keeps full
weight on every claim.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from lamps_agent.predictors.base import (
    DEFAULT_RETURNED_TOKENS,
    DEFAULT_TOOL_DURATION,
    DurationSource,
    Outcome,
    Prediction,
    PredictionQuery,
    Predictor,
)

DURATION_FLOOR_S = 0.1  # the ratio of durations is taken on (d + floor): 0 s claims stay finite
UNKNOWN_TOOL = "unknown"  # a claimed final turn that is not: the tool it will call is not known
MAX_OPEN_CLAIMS = 100_000  # turns predicted but not yet observed (aborted ones are forgotten)
MAX_TENANTS_NAMED = 256  # tenants whose discounts are counted apart (names come from clients)
OTHER_TENANTS = "(others)"


@dataclass(slots=True)
class _Record:
    """One source's (a session's or a tenant's) claims against what followed."""

    output: deque[float]  # ln((observed + 1) / (claimed + 1))
    duration: deque[float]  # ln((observed + floor) / (claimed + floor))
    finals: int = 0  # turns claimed final
    false_finals: int = 0  # ... that called a tool
    caught: OrderedDict[Hashable, bool] = field(default_factory=OrderedDict)
    # ^ a tenant's last sessions with evidence: whether each one's own record went off

    @classmethod
    def empty(cls, window: int) -> _Record:
        return cls(output=deque(maxlen=window), duration=deque(maxlen=window))


@dataclass(slots=True)
class _ToolStats:
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    returned: deque[float] = field(default_factory=lambda: deque(maxlen=256))


class CalibratedPredictor(Predictor):
    """Discounts ``inner``'s predictions (a client's hints) by the calibration of their source
    (module docstring).  ``prior``: per-tool durations (the tool registry)."""

    def __init__(
        self,
        inner: Predictor,
        *,
        prior: DurationSource | None = None,
        tolerance: float = 2.0,
        window: int = 64,
        min_tenant: int = 8,
        min_population: int = 32,
    ) -> None:
        if not tolerance > 1:
            raise ValueError(f"tolerance must be a factor > 1, got {tolerance}")
        if window < 1 or min_tenant < 1:
            raise ValueError("window and min_tenant must be >= 1")
        self.inner = inner
        self.name = inner.name
        self.prior = prior
        self._log_tolerance = math.log(tolerance)
        self._window = window
        self._min_tenant = min_tenant
        self._min_population = min_population
        self._outputs: dict[tuple[str, str | None], deque[float]] = {}  # by (agent, tool)
        self._records: dict[Hashable, _Record] = {}
        self._tools: dict[str, _ToolStats] = {}
        self._claims: dict[Hashable, Prediction] = {}
        self.discounted = 0  # predictions changed (a counter for reports and tests)
        self.discounted_by: Counter[str | None] = Counter()  # ... by tenant (None: no tenant)

    # -- the interface ----------------------------------------------------------------------
    def predict(self, query: PredictionQuery) -> Prediction:
        claim = self.inner.predict(query)
        if len(self._claims) >= MAX_OPEN_CLAIMS:
            self._claims.pop(next(iter(self._claims)))
        self._claims[_turn(query)] = claim
        judged = self._discount(query, claim)
        if judged is not claim:
            self.discounted += 1
            tenant = query.tenant
            if tenant not in self.discounted_by and len(self.discounted_by) >= MAX_TENANTS_NAMED:
                tenant = OTHER_TENANTS
            self.discounted_by[tenant] += 1
        return judged

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:
        self.inner.observe(query, outcome)
        outputs = self._outputs.get((query.agent, outcome.tool))
        if outputs is None:
            outputs = self._outputs[query.agent, outcome.tool] = deque(maxlen=256)
        outputs.append(float(outcome.output_tokens))
        if outcome.tool is not None:
            stats = self._tools.setdefault(outcome.tool, _ToolStats())
            stats.durations.append(outcome.tool_duration)
            stats.returned.append(float(outcome.returned_tokens))
        claim = self._claims.pop(_turn(query), None)
        if claim is None:
            return
        session, tenant = (self._record(source) for source in _sources(query))
        _compare(session, claim, outcome)
        _compare(tenant, claim, outcome)
        self._note_session(tenant, _sources(query)[0], caught=self._understated(session))

    def _record(self, source: Hashable) -> _Record:
        record = self._records.get(source)
        if record is None:
            record = self._records[source] = _Record.empty(self._window)
        return record

    def _note_session(self, tenant: _Record, session: Hashable, *, caught: bool) -> None:
        """Keeps the tenant's last ``window`` sessions' verdicts (a session once caught stays
        caught: a lie is systematic)."""
        was = tenant.caught.pop(session, False)
        tenant.caught[session] = was or caught
        if len(tenant.caught) > self._window:
            tenant.caught.popitem(last=False)

    def _doubted(self, query: PredictionQuery) -> bool:
        """Whether ``query``'s tenant was caught lying in one of its last sessions."""
        record = self._records.get(_sources(query)[1])
        return record is not None and any(record.caught.values())

    def refute_final(self, *, tenant: str | None, program_id: str) -> None:
        """A program whose last turn was claimed final came back: that claim was false.  For an
        engine that learns it only then (vLLM's plug-in: the session's next turn arrives), not
        from the turn's outcome as the simulator does."""
        session = self._record(("session", tenant, program_id))
        record = self._record(("tenant", tenant))
        for r in (session, record):
            r.false_finals += 1
        self._note_session(record, ("session", tenant, program_id), caught=True)

    # -- the discount -----------------------------------------------------------------------
    def trusted(self, query: PredictionQuery) -> bool:
        """Whether the claims of ``query``'s source stand unchanged (but for plausibility)."""
        record = self._evidence(query)
        return record is None or self._clean(record)

    def _clean(self, record: _Record) -> bool:
        return not (self._off(record.output) or self._off(record.duration) or record.false_finals)

    def _understated(self, record: _Record) -> bool:
        """Whether a source claimed less than it did (shorter outputs or tools, or a final
        answer that was not): the lie a first turn's doubt guards against."""
        over = self._log_tolerance
        return bool(
            record.false_finals
            or (record.output and statistics.median(record.output) > over)
            or (record.duration and statistics.median(record.duration) > over)
        )

    def _session_known(self, query: PredictionQuery) -> bool:
        record = self._records.get(_sources(query)[0])
        return record is not None and bool(record.output or record.finals)

    def _evidence(self, query: PredictionQuery) -> _Record | None:
        session, tenant = _sources(query)
        record = self._records.get(session)
        if record is not None and (record.output or record.finals):
            return record
        record = self._records.get(tenant)
        if record is not None and (
            len(record.output) + record.finals >= self._min_tenant or record.false_finals
        ):  # a false final is evidence at once: the program did go on
            return record
        return None

    def _off(self, ratios: deque[float]) -> bool:
        return bool(ratios) and abs(statistics.median(ratios)) > self._log_tolerance

    def _discount(self, query: PredictionQuery, claim: Prediction) -> Prediction:
        record = self._evidence(query)
        if record is None or (not self._session_known(query) and self._clean(record)):
            return self._plausible(query, claim, doubt=self._doubted(query))
        output, tool = claim.output_tokens, claim.tool
        duration, returned = claim.tool_duration, claim.returned_tokens
        changed = False
        if self._off(record.output):
            ratio = math.exp(statistics.median(record.output))
            output, changed = max((output + 1.0) * ratio - 1.0, 1.0), True
        if tool is None and record.false_finals:
            tool = query.tool or UNKNOWN_TOOL
            duration, returned, changed = math.nan, self._returned_prior(tool), True
        if tool is not None and (math.isnan(duration) or self._off(record.duration)):
            duration, changed = self._duration_prior(tool, duration, record), True
        if not changed:
            return claim
        return Prediction(
            output_tokens=output, tool=tool, tool_duration=duration, returned_tokens=returned
        )

    def _plausible(self, query: PredictionQuery, claim: Prediction, *, doubt: bool) -> Prediction:
        """A first claim outside its population's range becomes the population's median; with
        ``doubt`` (a tenant caught lying), so does one more favourable than that median."""
        output, duration = claim.output_tokens, claim.tool_duration
        outputs = self._outputs.get((query.agent, claim.tool))
        if outputs is not None and len(outputs) >= self._min_population:
            output = self._within(output, outputs, floor=1.0, doubt=doubt)
        stats = self._tools.get(claim.tool) if claim.tool is not None else None
        if stats is not None and len(stats.durations) >= self._min_population:
            duration = self._within(duration, stats.durations, floor=DURATION_FLOOR_S, doubt=doubt)
        if output == claim.output_tokens and duration == claim.tool_duration:
            return claim
        return Prediction(
            output_tokens=output,
            tool=claim.tool,
            tool_duration=duration,
            returned_tokens=claim.returned_tokens,
        )

    def _within(
        self, value: float, population: deque[float], *, floor: float, doubt: bool
    ) -> float:
        """``value``, or the population's median if it is more than the tolerance outside the
        population's range (on ``value + floor``: a 0 claim stays comparable) or, with
        ``doubt``, below the median."""
        tolerance = math.exp(self._log_tolerance)
        low, high = (min(population) + floor) / tolerance, (max(population) + floor) * tolerance
        median = statistics.median(population)
        if doubt and value < median:
            return median
        if low <= value + floor <= high:
            return value
        return median

    def _duration_prior(self, tool: str, claimed: float, record: _Record) -> float:
        """The tool's duration by the registry, else as observed here, else the claim scaled by
        its source's ratio (``claimed`` NaN: no claim at all, the default)."""
        if self.prior is not None:
            estimate = self.prior.estimate(tool)
            if estimate.count > 0:
                return estimate.p50
        stats = self._tools.get(tool)
        if stats is not None and stats.durations:
            return statistics.median(stats.durations)
        if math.isnan(claimed):
            return DEFAULT_TOOL_DURATION
        ratio = math.exp(statistics.median(record.duration)) if record.duration else 1.0
        return max((claimed + DURATION_FLOOR_S) * ratio - DURATION_FLOOR_S, 0.0)

    def _returned_prior(self, tool: str) -> float:
        stats = self._tools.get(tool)
        if stats is not None and stats.returned:
            return statistics.median(stats.returned)
        return DEFAULT_RETURNED_TOKENS


def _turn(query: PredictionQuery) -> Hashable:
    return (query.tenant, query.program_id, query.step)


def _sources(query: PredictionQuery) -> tuple[Hashable, Hashable]:
    """The session's key and the tenant's."""
    return ("session", query.tenant, query.program_id), ("tenant", query.tenant)


def _compare(record: _Record, claim: Prediction, outcome: Outcome) -> None:
    record.output.append(math.log((outcome.output_tokens + 1.0) / (claim.output_tokens + 1.0)))
    if claim.tool is None:
        record.finals += 1
        record.false_finals += outcome.tool is not None
    elif outcome.tool is not None:
        floor = DURATION_FLOOR_S
        record.duration.append(
            math.log((outcome.tool_duration + floor) / (claim.tool_duration + floor))
        )
