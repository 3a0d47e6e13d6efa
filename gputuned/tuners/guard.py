"""The guard: the only part of tuning that acts. One change at a time, tried and judged.

States and transitions (`step(now)` is called by the tuning job every tick):

    SETTLED --baseline window measured, a tuner proposes--> apply --> WARMUP
    SETTLED --recommend mode--> log the proposal, change nothing --> SETTLED
    WARMUP  --warmup passed--> TRIAL
    TRIAL   --SLO breach or error spike in the partial window--> revert --> COOLDOWN
    TRIAL   --trial window measured--> keep (it beat the baseline beyond the measured
                noise, or for backoff/shrink: the SLO holds without losing goodput)
                or revert --> COOLDOWN
    TRIAL   --the verdict is within the noise--> back to the old setting --> CONFIRM
    CONFIRM --old, new, old... windows until the mean of the pairs is clear, or the
                window budget is spent (`confirm.py`; fewer windows where a set takes
                seconds, see `_window_budget`)--> keep or revert --> COOLDOWN
    COOLDOWN --cooldown passed--> SETTLED
    SETTLED --`explore_patience` explore trials in a row did not pay--> converged: no
                explore move until a shift, `resume()` or `reexplore_seconds` later
    WARMUP/TRIAL --the mode leaves auto--> revert the change --> COOLDOWN
    any     --frozen mode--> nothing

The guard is the state machine; it composes small parts, each with its own rule and its
own tests: `verdict` (a trial window judged against its baseline), `confirm.Interleaving`
(a verdict within the noise), `directions.DirectionMemory` (directions that did not pay
are not tried again until the landscape moves), `flaps.FlapTracker` (a knob reverted
`flap_reverts` times within `flap_window` is left alone for that window),
`ceilings.Ceilings` (the highest value that fits, learned from out-of-memory events),
`shifts.ShiftDetector` (a workload shift restarts exploration) and `stop_rule.StopRule`
(convergence). Bounds come from the worker's hello; a step is at most what the tuner
proposes (x2 or one lane). A move marked `wins_ties` (half the batch) is kept unless
goodput falls: its bar is no change, not the margin.

A knob set by hand is frozen until `resume()`. Every decision is recorded with the tuner
that proposed it and its evidence (`messages.Decision`, `messages.Evidence`).

Time: `now`, which every step is given, is monotonic seconds (the clock the worker's stats
and the measured windows use), so a wall-clock jump cannot stretch or cut a trial; the
wall clock only stamps decisions for people (`Decision.t`).

Neighbours: workers on one host take turns to run trials (`turns.py`): a guard tries a change
only in its turn, and does not take a baseline measured while a neighbour's trial ran.

`reconfigure` takes new settings whole (a reload of the `[tuning]` section): a trial in
flight was set up against the old objective, so it is reverted, and exploration starts
afresh under the new settings.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from gputuned.control.messages import ALL_KNOBS, Action, Decision, Evidence, WindowSummary
from gputuned.knobs import memory_bound
from gputuned.performance import Measurement, over_objective
from gputuned.tuners import verdict
from gputuned.tuners.base import Proposal, Tuner, TunerInput
from gputuned.tuners.ceilings import Ceilings
from gputuned.tuners.confirm import Interleaving, NoiseEstimate
from gputuned.tuners.directions import Direction, DirectionMemory
from gputuned.tuners.flaps import FlapTracker
from gputuned.tuners.mode import Mode
from gputuned.tuners.shifts import ShiftDetector
from gputuned.tuners.stop_rule import StopRule
from gputuned.tuners.turns import TrialTurn, alone

log = logging.getLogger(__name__)

MAX_MARGIN = 0.10
HARM_WINDOW_SECONDS = 1.0  # the shortest window harm is judged on


class Phase(enum.Enum):
    SETTLED = "settled"
    WARMUP = "warmup"
    TRIAL = "trial"
    CONFIRM = "confirm"
    COOLDOWN = "cooldown"


TRIAL_PHASES = (Phase.WARMUP, Phase.TRIAL, Phase.CONFIRM)
REQUESTS_PER_WINDOW = 5  # a baseline or trial window spans at least this many median request latencies
MAX_PACED_SECONDS = 120.0  # a change is in force, not yet judged


@dataclass(frozen=True)
class GuardSettings:
    slo_seconds: float
    baseline_seconds: float = 3.0
    warmup_seconds: float = 1.0
    trial_seconds: float = 3.0
    cooldown_seconds: float = 0.5
    min_margin: float = 0.03  # a kept change must beat the baseline by at least this share
    max_error_ratio: float = 0.01  # failed/refused requests per request during a trial
    flap_reverts: int = 3
    flap_window: float = 300.0
    shift_threshold: float = 0.5
    confirm_windows: int = 8  # the most windows an interleaved verdict takes (2: none; fewer for slow sets)
    explore_patience: int = 4  # explore trials in a row without a keep before converging
    reexplore_seconds: float = 600.0  # converged this long, every direction is tried again
    objective: str = "goodput"  # or goodput_per_watt (verdict.OBJECTIVES)


@dataclass(frozen=True)
class Context:
    """What the guard needs besides measurements: the knobs now, their bounds, the machine."""

    knobs: Mapping[str, int]
    bounds: Mapping[str, tuple[int, int]]
    device: str
    cores: int
    item_bytes: int


def _summary(m: Measurement | None) -> WindowSummary | None:
    if m is None:
        return None
    return {
        "goodput": round(m.goodput, 2),
        "throughput": round(m.throughput, 2),
        "arrival": round(m.arrival_rate, 2),
        "p99_ms": None if m.p99 is None else round(m.p99 * 1000, 2),
        "failed": m.failed,
        "oom": m.oom,
        "mean_batch": round(m.mean_batch, 2),
        "busy": round(m.busy_ratio, 3),
        "in_system": round(m.in_system, 2),
        "items_per_request": round(m.items_per_request, 2),
        "sm_active": None if m.sm_active is None else round(m.sm_active, 3),
        "watts": None if m.watts is None else round(m.watts, 1),
        "joules_per_request": None if m.joules_per_request is None else round(m.joules_per_request, 4),
    }


@dataclass
class _Trial:
    proposal: Proposal
    tuner: str  # the tuner that proposed it
    previous: dict[str, int]  # every knob the change touched, as it was
    baseline: Measurement
    margins: dict[str, float]  # noise of goodput and throughput in the baseline
    start: float  # when measuring starts (after warmup)
    applied_at: float  # harm is watched for from here, warmup included


@dataclass
class GuardView:
    """A snapshot for status and metrics."""

    mode: str
    phase: str
    trial_active: bool
    frozen_knobs: list[str]
    decisions: list[Decision]
    counts: dict[tuple[str, str], int]
    ceilings: dict[str, int] = field(default_factory=dict)
    verdict_windows: int = 0  # windows compared by every keep and revert so far


class Guard:
    def __init__(
        self,
        settings: GuardSettings,
        tuners: list[Tuner],
        context: Callable[[], Context | None],
        measure: Callable[[float, float], Measurement | None],
        apply: Callable[[dict[str, int]], dict[str, int]],
        record: Callable[[Decision], None],
        mode: Mode = Mode.AUTO,
        wall_clock: Callable[[], float] = time.time,
        turn: TrialTurn | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`measure(start, end)` returns the worker's behaviour between two monotonic times
        (None if unknown); `apply(knobs)` sets knobs on the worker and returns what it applied
        (it raises on refusal); `record(decision)` logs and persists a decision;
        `wall_clock` stamps decisions; `turn` is this worker's place in its neighbours' turns;
        `clock`, the monotonic clock of `step`'s `now`, is read again after a set, which may take
        seconds (a Triton model reloads), so that warmup and trial start once it is in force."""
        self.settings = settings
        self._tuners = tuners
        self._context = context
        self._measure = measure
        self._apply = apply
        self._record = record
        self._wall_clock = wall_clock
        self._clock = clock
        self._turn = turn or alone()
        self.mode = mode
        self._phase = Phase.SETTLED
        self._since = -math.inf  # the current settings have been in force (and settled) since then
        self._until = 0.0  # end of the cooldown
        self._settled_from = 0.0  # when the settings after the cooldown came into force
        self._trial: _Trial | None = None
        self._pace: Measurement | None = None  # the newest settled baseline: how long the worker's requests take
        self._directions = DirectionMemory()
        self._flaps = FlapTracker(settings.flap_reverts, settings.flap_window)
        self._frozen: set[str] = set()
        self._ceilings = Ceilings()
        self._shifts = ShiftDetector(settings.shift_threshold)
        self._stop = StopRule(settings.explore_patience, settings.reexplore_seconds)
        self._noise = NoiseEstimate()  # goodput's window-to-window noise, across baselines
        self._noise_sampled_until = -math.inf  # the end of the last baseline sampled for it
        self._interleaving: Interleaving | None = None
        self._window_start = 0.0  # when the interleaved window being measured started
        self._recent: collections.deque[Decision] = collections.deque(maxlen=50)
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._verdict_windows = 0

    # --- controls -------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def freeze(self, knobs: list[str]) -> None:
        """Knobs set by hand: left alone until resume()."""
        self._frozen.update(knobs)

    def resume(self) -> None:
        self._frozen.clear()
        self._explore_again()
        if self.mode is Mode.FROZEN:
            self.mode = Mode.AUTO

    def restart_exploration(self, now: float) -> None:
        """After the worker restarted or the workload changed: measure afresh, retry everything."""
        self._shifts.reference = None
        self._explore_again()
        self._flaps.clear()
        self._noise.clear()
        if self._trial is not None:
            self._turn.release(now)  # the trial is abandoned: the worker restarted or the load moved
        self._phase, self._trial, self._interleaving, self._since = Phase.SETTLED, None, None, now

    def _explore_again(self) -> None:
        """Every direction may be tried again, and the stop rule counts afresh."""
        self._directions.clear()
        self._stop.reset()

    def reconfigure(self, settings: GuardSettings, mode: Mode | None, now: float) -> None:
        """New settings, whole: a trial in flight is reverted, exploration restarts."""
        self.abandon(now, "the tuning settings were reloaded")
        self.settings = settings
        self._flaps = FlapTracker(settings.flap_reverts, settings.flap_window)
        self._shifts = ShiftDetector(settings.shift_threshold)
        self._stop = StopRule(settings.explore_patience, settings.reexplore_seconds)
        if mode is not None:
            self.mode = mode
        self.restart_exploration(now)

    def view(self) -> GuardView:
        converged = self._phase is Phase.SETTLED and self._stop.converged
        return GuardView(
            self.mode.value,
            "converged" if converged else self._phase.value,
            self._phase in TRIAL_PHASES,
            sorted(self._frozen),
            list(self._recent),
            dict(self._counts),
            self._ceilings.as_dict(),
            self._verdict_windows,
        )

    # --- the state machine ----------------------------------------------------------------

    def step(self, now: float) -> None:
        if self.mode is not Mode.AUTO and self._trial is not None:
            # The operator stopped the tuner's changes: an unproven one is not left in force,
            # nor decided later (a revert after `tune --mode frozen` returned would surprise).
            self.abandon(now, f"the tuner was set to {self.mode.value} during the trial")
            return
        if self.mode is Mode.FROZEN:
            return
        if self._phase is Phase.COOLDOWN:
            if now >= self._until:
                self._phase, self._since = Phase.SETTLED, self._settled_from
            return
        if self._phase in (Phase.WARMUP, Phase.TRIAL):
            self._step_trial(now)
            return
        if self._phase is Phase.CONFIRM:
            self._step_confirm(now)
            return
        self._step_settled(now)

    def _decide(
        self,
        knob: str,
        action: Action,
        old: int | None,
        new: int | None,
        reason: str,
        baseline: Measurement | None = None,
        trial: Measurement | None = None,
        tuner: str | None = None,
        evidence: Evidence | None = None,
    ) -> None:
        decision = Decision(
            self._wall_clock(), knob, action, old, new, reason, _summary(baseline), _summary(trial), tuner, evidence
        )
        self._recent.append(decision)
        self._counts[(knob, action.value)] += 1
        if evidence is not None and evidence.windows is not None:
            self._verdict_windows += evidence.windows
        if tuner is None:  # the workload or the search as a whole (shift, converge)
            log.info("tuner %s: %s", action.value, reason)
        else:
            log.info("tuner %s %s %s -> %s (%s): %s", action.value, knob, old, new, tuner, reason)
        self._record(decision)

    def _baseline(self, now: float) -> tuple[Measurement, dict[str, float]] | None:
        """The settled window at the current settings, and the noise of goodput and of
        throughput: the relative difference between its two halves, at least min_margin,
        at most MAX_MARGIN (noisier than that, a window says nothing anyway)."""
        start = max(self._since, now - self._paced(self.settings.baseline_seconds))
        if now - start < self._paced(self.settings.baseline_seconds):
            return None
        whole = self._measure(start, now)
        if whole is not None:
            self._pace = whole
        middle = (start + now) / 2
        first, second = self._measure(start, middle), self._measure(middle, now)
        if whole is None or first is None or second is None:
            return None
        if start >= self._noise_sampled_until:  # one sample per baseline: overlapping ones repeat it
            self._noise.add(first.goodput, second.goodput)
            self._noise_sampled_until = now
        margins = {}
        for metric in verdict.JUDGED_ON:
            a, b = getattr(first, metric), getattr(second, metric)
            spread = 2 * abs(a - b) / max(a + b, 1e-9)
            margins[metric] = min(max(self.settings.min_margin, spread), MAX_MARGIN)
        return whole, margins

    def _paced(self, seconds: float) -> float:
        """A baseline or trial window long enough for the worker's requests: at least
        REQUESTS_PER_WINDOW median request latencies (an LLM's requests last seconds; a
        window of a few seconds would judge mostly requests begun before the change)."""
        median = self._pace.p50 if self._pace is not None else None
        return max(seconds, min(REQUESTS_PER_WINDOW * (median or 0.0), MAX_PACED_SECONDS))

    def _paced_warmup(self) -> float:
        """The warm-up after a set: at least the p99 request latency, so that the requests
        begun under the old settings have left before the trial window opens."""
        tail = self._pace.p99 if self._pace is not None else None
        return max(self.settings.warmup_seconds, min(tail or 0.0, MAX_PACED_SECONDS))

    def _blocked(self, proposal: Proposal, old: int, now: float) -> bool:
        if any(knob in self._frozen for knob in proposal.changes()) or self._directions.refused(Direction.of(proposal, old)):
            return True
        return proposal.kind != "backoff" and self._flaps.flapping(proposal.knob, now)

    def _step_settled(self, now: float) -> None:
        measured = self._baseline(now)
        context = self._context()
        if measured is None or context is None:
            return
        if self._turn.disturbed(now - self._paced(self.settings.baseline_seconds), now):
            self._turn.wait(now)  # a neighbour's trial ran during this baseline: queue, and wait for a clean one
            return
        baseline, margins = measured
        shift = self._shifts.check(baseline)
        if shift is not None:
            self._decide(ALL_KNOBS, Action.SHIFT, None, None, f"{shift}: exploring again", baseline)
            self.restart_exploration(now)
            self._shifts.reference = baseline
            return
        inp = TunerInput(
            baseline,
            context.knobs,
            context.bounds,
            self.settings.slo_seconds,
            context.device,
            context.cores,
            context.item_bytes,
            self._ceilings.as_dict(),
            self._directions.no_gain(),
        )
        idle = baseline.arrival_rate == 0
        if self._stop.due_to_reexplore(now):
            self._explore_again()
        for tuner in self._tuners:
            proposal = tuner.propose(inp)
            if proposal is None or (idle and proposal.kind != "shrink"):
                continue
            if self._stop.converged and proposal.kind == "explore":
                continue
            if self._blocked(proposal, context.knobs[proposal.knob], now):
                continue
            if self.mode is not Mode.RECOMMEND and not self._turn.acquire(now):
                return  # a neighbour is on trial, or has waited longer: ask again next step
            self._shifts.reference = baseline
            self._act(proposal, tuner.name, context.knobs[proposal.knob], baseline, margins, now)
            return
        self._turn.withdraw()  # nothing to try: no longer in the queue for a turn

    def _act(
        self, proposal: Proposal, tuner: str, old: int, baseline: Measurement, margins: dict[str, float], now: float
    ) -> None:
        if self.mode is Mode.RECOMMEND:
            self._decide(proposal.knob, Action.RECOMMEND, old, proposal.value, proposal.reason, baseline, tuner=tuner)
            self._directions.refuse(Direction.of(proposal, old))  # say it once
            return
        if proposal.kind == "backoff" and baseline.oom and memory_bound(proposal.knob):
            self._ceilings.learn(proposal.knob, old - 1)
        context = self._context()
        previous = {knob: context.knobs[knob] for knob in proposal.changes()} if context else {proposal.knob: old}
        try:
            applied = self._apply(proposal.changes())
        except Exception as exc:  # noqa: BLE001 - a refusal (nack, lost worker) is recorded, not raised
            self._turn.release(now)
            reason = f"{proposal.reason}; refused: {exc}"
            self._decide(proposal.knob, Action.REFUSE, old, proposal.value, reason, baseline, tuner=tuner)
            self._directions.refuse(Direction.of(proposal, old))
            return
        now = self._after_set(now)
        value = applied.get(proposal.knob, proposal.value)
        self._decide(proposal.knob, Action.APPLY, old, value, proposal.reason, baseline, tuner=tuner)
        self._trial = _Trial(
            replace(proposal, value=value),  # its `past` mark too: a reverted jump is remembered apart from the step
            tuner,
            previous,
            baseline,
            margins,
            now + self._paced_warmup(),
            now,
        )
        self._phase = Phase.WARMUP

    def _step_trial(self, now: float) -> None:
        trial = self._trial
        assert trial is not None
        # Harm is watched for from the moment of the change: the warmup excuses noise, not damage.
        if now - trial.applied_at >= HARM_WINDOW_SECONDS:
            recent = self._measure(max(trial.applied_at, now - 2 * HARM_WINDOW_SECONDS), now)
            damage = self._harmful(trial, recent) if recent is not None else ""
            if damage and recent is not None:
                self._revert(trial, recent, now, f"harmful during the trial: {damage}", None)
                return
        if now < trial.start:
            return
        self._phase = Phase.TRIAL
        window = self._measure(trial.start, now)
        if now - trial.start < self._paced(self.settings.trial_seconds) or window is None:
            return
        if self._interleave(trial, window, now):
            return
        judged = verdict.judge(
            trial.proposal, trial.baseline, trial.margins, window, self.settings.slo_seconds, self.settings.objective
        )
        if judged.keep:
            self._keep(trial, window, now, "kept", trial.start, judged.evidence)  # the trial window is the next baseline
        else:
            self._revert(trial, window, now, judged.why, judged.evidence, no_gain=judged.no_gain)

    def _interleave(self, trial: _Trial, window: Measurement, now: float) -> bool:
        """Whether the trial window's verdict is within twice the noise of the bar, so that the
        old setting is put back and windows at the two settings take turns (`confirm.py`).
        A back-off (the SLO decides it) and an SLO breach are never in doubt."""
        kind, slo = trial.proposal.kind, self.settings.slo_seconds
        breached = (over_objective(window, slo) or 0.0) > 1
        if self.settings.confirm_windows <= 2 or kind == "backoff" or breached:
            return False
        metric = verdict.objective(trial.baseline, self.settings.objective, window)
        before, after = getattr(trial.baseline, metric), getattr(window, metric)
        if before <= 0 or after <= 0:
            return False
        margin = self.settings.min_margin
        bar = math.log1p(verdict.bar(trial.proposal, margin))
        noise = self._noise.value(margin, MAX_MARGIN)
        if abs(math.log(after / before) - bar) >= 2 * noise:
            return False
        try:
            self._apply(dict(trial.previous))
        except Exception:  # noqa: BLE001 - the single window's verdict stands; it is recorded
            return False
        switched = self._after_set(now)
        windows = self._window_budget(switched - now)
        self._interleaving = Interleaving(bar, noise, windows, metric, [(False, before), (True, after)])
        self._phase = Phase.CONFIRM
        self._window_start = switched + self._paced_warmup()
        return True

    def _window_budget(self, set_seconds: float) -> int:
        """The windows an interleaving may take: `confirm_windows` where a set is instant.
        Each window after the first two starts with a set; where a set takes seconds (a
        Triton model reload takes seconds and holds requests up), about as many as fit in
        the time the instant ones would take, and at least one: on such a server eight
        windows would take a minute and seven reloads to judge one batch step. (Rounded: a
        worker's set, acknowledged within a batch, does not cost a window.)"""
        measured = self._paced_warmup() + self._paced(self.settings.trial_seconds)
        more = (self.settings.confirm_windows - 2) * measured / (measured + set_seconds)
        return 2 + max(1, round(more))

    def _step_confirm(self, now: float) -> None:
        """One more window of an interleaving: recorded, then judged, else the other setting."""
        trial, interleaving = self._trial, self._interleaving
        assert trial is not None and interleaving is not None
        if now - self._window_start < self._paced(self.settings.trial_seconds):
            return
        window = self._measure(self._window_start, now)
        if window is None:
            return
        new = interleaving.next_is_new
        damage = self._harmful(trial, window) if new else ""
        if damage:
            self._revert(trial, window, now, f"harmful during the interleaved windows: {damage}", interleaving.evidence())
            return
        value = getattr(window, interleaving.metric)
        self._noise.add(interleaving.last(new), value)  # the same setting, two windows apart
        interleaving.add(new, value)
        keep = interleaving.verdict()
        try:
            if keep is None or keep != new:  # the other setting is measured next, or decided on
                self._apply(trial.proposal.changes() if not new else dict(trial.previous))
        except Exception as exc:  # noqa: BLE001 - recorded; the worker may be restarting
            why = f"{interleaving.describe()}; switching settings failed: {exc}"
            self._revert(trial, window, now, why, interleaving.evidence())
            return
        switched = self._after_set(now)
        if keep is None:
            self._window_start = switched + self._paced_warmup()
        elif keep:
            settled_from = self._window_start if new else switched + self._paced_warmup()
            self._keep(trial, window, now, f"kept, {interleaving.describe()}", settled_from, interleaving.evidence())
        else:
            no_gain = trial.proposal.kind == "explore"
            self._revert(trial, window, now, interleaving.describe(), interleaving.evidence(), no_gain=no_gain, in_force=False)

    def _keep(self, trial: _Trial, window: Measurement, now: float, how: str, settled_from: float, evidence: Evidence) -> None:
        knob = trial.proposal.knob
        self._decide(
            knob,
            Action.KEEP,
            trial.previous[knob],
            trial.proposal.value,
            f"{trial.proposal.reason}; {how}",
            trial.baseline,
            window,
            trial.tuner,
            evidence,
        )
        if trial.proposal.kind == "explore":
            # Goodput moved beyond the noise, so the landscape did: directions other
            # knobs were refused in may pay now.
            self._directions.landscape_moved(knob)
            self._stop.paid()
        self._directions.refuse(Direction.of(trial.proposal, trial.previous[knob]).undoing(trial.proposal.value))
        self._finish(now, settled_from)

    def _harmful(self, trial: _Trial, window: Measurement) -> str:
        return verdict.harmful(trial.proposal, trial.baseline, window, self.settings.slo_seconds, self.settings.max_error_ratio)

    def abandon(self, now: float, why: str) -> None:
        """Ends a trial in flight, if any, before its verdict (a reload, the mode leaving auto,
        the daemon stopping): its change is reverted but not counted against its direction
        (nothing was learnt about it)."""
        trial = self._trial
        if trial is not None:
            window = self._measure(trial.start, now) or trial.baseline
            # An interleaving switches the change on and off: it is in force while its window runs.
            in_force = self._interleaving is None or self._interleaving.next_is_new
            self._revert(trial, window, now, why, None, judged=False, in_force=in_force)

    def _revert(
        self,
        trial: _Trial,
        window: Measurement,
        now: float,
        why: str,
        evidence: Evidence | None,
        no_gain: bool = False,
        judged: bool = True,
        in_force: bool = True,
    ) -> None:
        """Puts the trial's previous values back (unless they are already, `in_force` false);
        `judged` reverts also refuse its direction, count towards the knob's flapping and,
        for an explore move, towards the stop rule; `no_gain`, an explore move that held the
        SLO but did not pay, is remembered for the tuners."""
        knob = trial.proposal.knob
        self._interleaving = None
        if in_force:
            try:
                self._apply(dict(trial.previous))
            except Exception as exc:  # noqa: BLE001 - recorded; the worker may be restarting
                why = f"{why}; the revert itself failed: {exc}"
        now = self._after_set(now)
        self._decide(
            knob,
            Action.REVERT,
            trial.proposal.value,
            trial.previous[knob],
            f"{trial.proposal.reason}; {why}",
            trial.baseline,
            window,
            trial.tuner,
            evidence,
        )
        if window.oom and trial.proposal.value > trial.previous[knob]:
            # Raising it ran out of memory: it stays below that value for good, not only until
            # the refused direction is forgotten (another knob's keep, a shift).
            self._ceilings.learn(knob, trial.proposal.value - 1)
        if judged:
            direction = Direction.of(trial.proposal, trial.previous[knob])
            self._directions.refuse(direction)
            self._flaps.reverted(knob, now)
            if no_gain and not trial.proposal.past:
                self._directions.note_no_gain(direction)
            if trial.proposal.kind == "explore" and self._stop.missed(now):
                self._decide(
                    ALL_KNOBS,
                    Action.CONVERGE,
                    None,
                    None,
                    f"{self._stop.misses} explore trials in a row did not pay: no explore move until a workload "
                    f"shift, `gputuned tune --resume` or {self._stop.reexplore_seconds:g} s from now",
                )
        self._finish(now, settled_from=now + self._paced_warmup())

    def _after_set(self, now: float) -> float:
        """The time a set just made took effect: `now`, or later when the set took a while."""
        return max(now, self._clock()) if self._clock is not None else now

    def _finish(self, now: float, settled_from: float) -> None:
        self._turn.release(now)
        self._trial = None
        self._phase, self._until = Phase.COOLDOWN, now + self.settings.cooldown_seconds
        self._settled_from = settled_from
