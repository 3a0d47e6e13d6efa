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

Bounds come from the worker's hello; a step is at most what the tuner proposes (x2 or
one lane); a knob reverted `flap_reverts` times within `flap_window` is left alone for
that window. A direction once reverted (say, raising the batch from 32) is not tried
again until another knob's explore change is kept (the landscape moved) or the workload
shifts. A kept change also rules out its own undoing (from 8 back up to 16 after 8 beat
16) on the same terms. A move marked `past` (beyond a reverted step in the same direction,
say from 1 straight to 8 after 2 did not pay) is not blocked by the reverted step (once
reverted itself, it is remembered apart from the step, so it too is tried once), and
tuners are told which directions were reverted (`TunerInput.reverted`). A move marked
`wins_ties` (half the batch) is kept unless goodput falls: its bar is no change, not the
margin.

A workload shift restarts exploration. Our own changes move one of two signals, a real
shift moves both: in a closed loop (clients waiting for answers) a better setting raises
the arrival rate but not the requests in the system (the clients); with open-loop traffic
it changes how many requests are inside but not how fast they come. Fewer or more
clients, or a slower or faster stream of requests, move both the same way. So a shift is
both signals having moved the same way, one by more than `shift_threshold` and the other
by more than half of it, since the baseline of the last change tried (a shift during a
trial shows at the next baseline; while nothing is tried, slow drift adds up). The input
size (items per request) does not depend on our settings: it moving by more than
`shift_threshold` is a shift on its own.

A knob set by hand is frozen until `resume()`. Every decision is recorded with its
evidence.

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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from gputuned.knobs import memory_bound
from gputuned.performance import Measurement
from gputuned.tuners.base import Proposal, Tuner, TunerInput
from gputuned.tuners.confirm import Interleaving, NoiseEstimate
from gputuned.tuners.mode import Mode
from gputuned.tuners.turns import TrialTurn, alone

log = logging.getLogger(__name__)

OVERLOAD_SHARE = 0.5  # below this share of requests within the SLO, the worker is overloaded
MAX_MARGIN = 0.10
HARM_WINDOW_SECONDS = 1.0  # the shortest window harm is judged on


class Phase(enum.Enum):
    SETTLED = "settled"
    WARMUP = "warmup"
    TRIAL = "trial"
    CONFIRM = "confirm"
    COOLDOWN = "cooldown"


TRIAL_PHASES = (Phase.WARMUP, Phase.TRIAL, Phase.CONFIRM)  # a change is in force, not yet judged


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


@dataclass(frozen=True)
class Context:
    """What the guard needs besides measurements: the knobs now, their bounds, the machine."""

    knobs: Mapping[str, int]
    bounds: Mapping[str, tuple[int, int]]
    device: str
    cores: int
    item_bytes: int


# What the guard can decide about one knob; "shift" is about the workload, recorded under knob "*".
KNOB_ACTIONS = ("apply", "keep", "revert", "refuse", "recommend")


@dataclass(frozen=True)
class Decision:
    t: float  # wall clock, for people; decisions are taken on the monotonic clock
    knob: str
    action: str  # apply, keep, revert, refuse, recommend, shift
    old: int | None
    new: int | None
    reason: str
    baseline: dict[str, Any] | None = None
    trial: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _summary(m: Measurement | None) -> dict[str, Any] | None:
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
    }


@dataclass
class _Trial:
    proposal: Proposal
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


def _to_beat(trial: _Trial, margin: float) -> float:
    """The share an explore move must gain by: the margin, or none for one that wins ties."""
    return 0.0 if trial.proposal.wins_ties else margin


def _relative_change(before: float, after: float) -> float:
    """(after - before) / before; from zero, any rise is an infinite change."""
    if before <= 0:
        return 0.0 if after <= 0 else math.inf
    return (after - before) / before


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
        # (knob, from value, direction, past) that did not pay; see Proposal.past
        self._rejected: set[tuple[str, int, int, bool]] = set()
        # (knob, from value, direction) of explore steps that held the SLO but gained nothing
        self._no_gain: set[tuple[str, int, int]] = set()
        self._reverts: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._frozen: set[str] = set()
        self._ceilings: dict[str, int] = {}
        self._reference: Measurement | None = None  # the baseline of the last change tried
        self._noise = NoiseEstimate()  # goodput's window-to-window noise, across baselines
        self._noise_sampled_until = -math.inf  # the end of the last baseline sampled for it
        self._interleaving: Interleaving | None = None
        self._window_start = 0.0  # when the interleaved window being measured started
        self._misses = 0  # explore trials in a row that did not pay
        self._converged_at: float | None = None
        self._recent: collections.deque[Decision] = collections.deque(maxlen=50)
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

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
        self._reference = None
        self._explore_again()
        self._reverts.clear()
        self._noise.clear()
        if self._trial is not None:
            self._turn.release(now)  # the trial is abandoned: the worker restarted or the load moved
        self._phase, self._trial, self._interleaving, self._since = Phase.SETTLED, None, None, now

    def _explore_again(self) -> None:
        """Every direction may be tried again, and the stop rule counts afresh."""
        self._rejected.clear()
        self._no_gain.clear()
        self._misses, self._converged_at = 0, None

    def reconfigure(self, settings: GuardSettings, mode: Mode | None, now: float) -> None:
        """New settings, whole: a trial in flight is reverted, exploration restarts."""
        self._abandon_trial(now, "the tuning settings were reloaded")
        self.settings = settings
        if mode is not None:
            self.mode = mode
        self.restart_exploration(now)

    def view(self) -> GuardView:
        converged = self._phase is Phase.SETTLED and self._converged_at is not None
        return GuardView(
            self.mode.value,
            "converged" if converged else self._phase.value,
            self._phase in TRIAL_PHASES,
            sorted(self._frozen),
            list(self._recent),
            dict(self._counts),
            dict(self._ceilings),
        )

    # --- the state machine ----------------------------------------------------------------

    def step(self, now: float) -> None:
        if self.mode is not Mode.AUTO and self._trial is not None:
            # The operator stopped the tuner's changes: an unproven one is not left in force,
            # nor decided later (a revert after `tune --mode frozen` returned would surprise).
            self._abandon_trial(now, f"the tuner was set to {self.mode.value} during the trial")
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
        now: float,
        knob: str,
        action: str,
        old: int | None,
        new: int | None,
        reason: str,
        baseline: Measurement | None = None,
        trial: Measurement | None = None,
    ) -> None:
        decision = Decision(self._wall_clock(), knob, action, old, new, reason, _summary(baseline), _summary(trial))
        self._recent.append(decision)
        self._counts[(knob, action)] += 1
        log.info("tuner %s %s %s -> %s: %s", action, knob, old, new, reason)
        self._record(decision)

    def _baseline(self, now: float) -> tuple[Measurement, dict[str, float]] | None:
        """The settled window at the current settings, and the noise of goodput and of
        throughput: the relative difference between its two halves, at least min_margin,
        at most MAX_MARGIN (noisier than that, a window says nothing anyway)."""
        start = max(self._since, now - self.settings.baseline_seconds)
        if now - start < self.settings.baseline_seconds:
            return None
        whole = self._measure(start, now)
        middle = (start + now) / 2
        first, second = self._measure(start, middle), self._measure(middle, now)
        if whole is None or first is None or second is None:
            return None
        if start >= self._noise_sampled_until:  # one sample per baseline: overlapping ones repeat it
            self._noise.add(first.goodput, second.goodput)
            self._noise_sampled_until = now
        margins = {}
        for metric in ("goodput", "throughput"):
            a, b = getattr(first, metric), getattr(second, metric)
            spread = 2 * abs(a - b) / max(a + b, 1e-9)
            margins[metric] = min(max(self.settings.min_margin, spread), MAX_MARGIN)
        return whole, margins

    @staticmethod
    def _direction(proposal: Proposal, old: int) -> tuple[str, int, int, bool]:
        return proposal.knob, old, 1 if proposal.value > old else -1, proposal.past

    def _blocked(self, proposal: Proposal, old: int, now: float) -> bool:
        if any(knob in self._frozen for knob in proposal.changes()) or self._direction(proposal, old) in self._rejected:
            return True
        reverts = self._reverts[proposal.knob]
        while reverts and now - reverts[0] > self.settings.flap_window:
            reverts.popleft()
        return len(reverts) >= self.settings.flap_reverts and proposal.kind != "backoff"

    def _step_settled(self, now: float) -> None:
        measured = self._baseline(now)
        context = self._context()
        if measured is None or context is None:
            return
        if self._turn.disturbed(now - self.settings.baseline_seconds, now):
            self._turn.wait(now)  # a neighbour's trial ran during this baseline: queue, and wait for a clean one
            return
        baseline, margins = measured
        if self._shifted(baseline, now):
            return
        inp = TunerInput(
            baseline,
            context.knobs,
            context.bounds,
            self.settings.slo_seconds,
            context.device,
            context.cores,
            context.item_bytes,
            self._ceilings,
            frozenset(self._no_gain),
        )
        idle = baseline.arrival_rate == 0
        if self._converged_at is not None and now - self._converged_at >= self.settings.reexplore_seconds:
            self._explore_again()
        for tuner in self._tuners:
            proposal = tuner.propose(inp)
            if proposal is None or (idle and proposal.kind != "shrink"):
                continue
            if self._converged_at is not None and proposal.kind == "explore":
                continue
            if self._blocked(proposal, context.knobs[proposal.knob], now):
                continue
            if self.mode is not Mode.RECOMMEND and not self._turn.acquire(now):
                return  # a neighbour is on trial, or has waited longer: ask again next step
            self._reference = baseline
            self._act(proposal, context.knobs[proposal.knob], baseline, margins, now)
            return
        self._turn.withdraw()  # nothing to try: no longer in the queue for a turn

    def _shifted(self, baseline: Measurement, now: float) -> bool:
        """Whether the arrival rate and the requests in the system both moved the same way,
        or the input size moved, since the reference (see the module docstring); on a
        shift, exploration restarts."""
        reference = self._reference
        if reference is None:
            self._reference = baseline
            return False
        threshold = self.settings.shift_threshold
        changes = [_relative_change(getattr(reference, name), getattr(baseline, name)) for name in ("arrival_rate", "in_system")]
        load_moved = changes[0] * changes[1] > 0 and max(map(abs, changes)) > threshold and min(map(abs, changes)) > threshold / 2
        sized = reference.items_per_request > 0 and baseline.items_per_request > 0
        size_moved = sized and abs(_relative_change(reference.items_per_request, baseline.items_per_request)) > threshold
        if not load_moved and not size_moved:
            return False
        self._decide(
            now,
            "*",
            "shift",
            None,
            None,
            f"arrival rate {reference.arrival_rate:.0f} -> {baseline.arrival_rate:.0f} req/s, requests in the "
            f"worker {reference.in_system:.1f} -> {baseline.in_system:.1f}, items per request "
            f"{reference.items_per_request:.1f} -> {baseline.items_per_request:.1f}: exploring again",
            baseline,
        )
        self.restart_exploration(now)
        self._reference = baseline
        return True

    def _act(self, proposal: Proposal, old: int, baseline: Measurement, margins: dict[str, float], now: float) -> None:
        if self.mode is Mode.RECOMMEND:
            self._decide(now, proposal.knob, "recommend", old, proposal.value, proposal.reason, baseline)
            self._rejected.add(self._direction(proposal, old))  # say it once
            return
        if proposal.kind == "backoff" and baseline.oom and memory_bound(proposal.knob):
            self._learn_ceiling(proposal.knob, old - 1)
        context = self._context()
        previous = {knob: context.knobs[knob] for knob in proposal.changes()} if context else {proposal.knob: old}
        try:
            applied = self._apply(proposal.changes())
        except Exception as exc:  # noqa: BLE001 - a refusal (nack, lost worker) is recorded, not raised
            self._turn.release(now)
            self._decide(now, proposal.knob, "refuse", old, proposal.value, f"{proposal.reason}; refused: {exc}", baseline)
            self._rejected.add(self._direction(proposal, old))
            return
        now = self._after_set(now)
        value = applied.get(proposal.knob, proposal.value)
        self._decide(now, proposal.knob, "apply", old, value, proposal.reason, baseline)
        self._trial = _Trial(
            replace(proposal, value=value),  # its `past` mark too: a reverted jump is remembered apart from the step
            previous,
            baseline,
            margins,
            now + self.settings.warmup_seconds,
            now,
        )
        self._phase = Phase.WARMUP

    def _step_trial(self, now: float) -> None:
        trial = self._trial
        assert trial is not None
        # Harm is watched for from the moment of the change: the warmup excuses noise, not damage.
        if now - trial.applied_at >= HARM_WINDOW_SECONDS:
            recent = self._measure(max(trial.applied_at, now - 2 * HARM_WINDOW_SECONDS), now)
            if recent is not None and self._harmful(trial, recent):
                self._revert(trial, recent, now, "harmful during the trial")
                return
        if now < trial.start:
            return
        self._phase = Phase.TRIAL
        window = self._measure(trial.start, now)
        if now - trial.start < self.settings.trial_seconds or window is None:
            return
        verdict = self._judge(trial, window)
        if self._interleave(trial, window, verdict, now):
            return
        if verdict is None:
            self._keep(trial, window, now, "kept", settled_from=trial.start)  # the trial window is the next baseline
        else:
            self._revert(trial, window, now, *verdict)

    def _interleave(self, trial: _Trial, window: Measurement, verdict: tuple[str, bool] | None, now: float) -> bool:
        """Whether the trial window's verdict is within twice the noise of the bar, so that the
        old setting is put back and windows at the two settings take turns (`confirm.py`).
        A back-off (the SLO decides it) and an SLO breach are never in doubt."""
        kind, slo = trial.proposal.kind, self.settings.slo_seconds
        if self.settings.confirm_windows <= 2 or kind == "backoff" or (window.p99 is not None and window.p99 > slo):
            return False
        metric = self._objective(trial.baseline)
        before, after = getattr(trial.baseline, metric), getattr(window, metric)
        if before <= 0 or after <= 0:
            return False
        margin = self.settings.min_margin
        bar = math.log1p(_to_beat(trial, margin) if kind == "explore" else -margin)
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
        self._window_start = switched + self.settings.warmup_seconds
        return True

    def _window_budget(self, set_seconds: float) -> int:
        """The windows an interleaving may take: `confirm_windows` where a set is instant.
        Each window after the first two starts with a set; where a set takes seconds (a
        Triton model reload, ~5 s here, which also holds requests up), about as many as
        fit in the time the instant ones would take, and at least one: on such a server
        eight windows took a minute and seven reloads to judge one batch step. (Rounded: a
        worker's set, acknowledged within a batch, does not cost a window.)"""
        measured = self.settings.warmup_seconds + self.settings.trial_seconds
        more = (self.settings.confirm_windows - 2) * measured / (measured + set_seconds)
        return 2 + max(1, round(more))

    def _step_confirm(self, now: float) -> None:
        """One more window of an interleaving: recorded, then judged, else the other setting."""
        trial, interleaving = self._trial, self._interleaving
        assert trial is not None and interleaving is not None
        if now - self._window_start < self.settings.trial_seconds:
            return
        window = self._measure(self._window_start, now)
        if window is None:
            return
        new = interleaving.next_is_new
        if new and self._harmful(trial, window):
            self._revert(trial, window, now, "harmful during the interleaved windows")
            return
        value = getattr(window, interleaving.metric)
        self._noise.add(interleaving.last(new), value)  # the same setting, two windows apart
        interleaving.add(new, value)
        keep = interleaving.verdict()
        try:
            if keep is None or keep != new:  # the other setting is measured next, or decided on
                self._apply(trial.proposal.changes() if not new else dict(trial.previous))
        except Exception as exc:  # noqa: BLE001 - recorded; the worker may be restarting
            self._revert(trial, window, now, f"{interleaving.describe()}; switching settings failed: {exc}")
            return
        switched = self._after_set(now)
        if keep is None:
            self._window_start = switched + self.settings.warmup_seconds
        elif keep:
            settled_from = self._window_start if new else switched + self.settings.warmup_seconds
            self._keep(trial, window, now, f"kept, {interleaving.describe()}", settled_from)
        else:
            self._revert(trial, window, now, interleaving.describe(), trial.proposal.kind == "explore", in_force=False)

    def _keep(self, trial: _Trial, window: Measurement, now: float, how: str, settled_from: float) -> None:
        knob = trial.proposal.knob
        self._decide(
            now,
            knob,
            "keep",
            trial.previous[knob],
            trial.proposal.value,
            f"{trial.proposal.reason}; {how}",
            trial.baseline,
            window,
        )
        if trial.proposal.kind == "explore":
            # Goodput moved beyond the noise, so the landscape did: directions other
            # knobs were refused in may pay now.
            self._rejected = {entry for entry in self._rejected if entry[0] == knob}
            self._no_gain = {entry for entry in self._no_gain if entry[0] == knob}
            self._misses = 0
        self._rejected.add((knob, trial.proposal.value, -self._direction(trial.proposal, trial.previous[knob])[2], False))
        self._finish(now, settled_from)

    def _harmful(self, trial: _Trial, window: Measurement) -> bool:
        slo = self.settings.slo_seconds
        newly_breached = window.p99 is not None and window.p99 > slo and not (trial.baseline.p99 and trial.baseline.p99 > slo)
        requests = max(window.arrival_rate * window.seconds, 1.0)
        error_spike = window.failed / requests > self.settings.max_error_ratio and window.failed > trial.baseline.failed
        return (newly_breached and trial.proposal.kind != "backoff") or error_spike or window.oom > 0

    @staticmethod
    def _objective(baseline: Measurement) -> str:
        """Goodput; while almost nothing meets the SLO (overload), throughput, which is what
        drains the queue."""
        return "throughput" if baseline.goodput < OVERLOAD_SHARE * baseline.throughput else "goodput"

    def _judge(self, trial: _Trial, window: Measurement) -> tuple[str, bool] | None:
        """None to keep the change, else why it is reverted and whether only for want of a
        gain (an explore move that held the SLO but did not beat the baseline)."""
        base, slo = trial.baseline, self.settings.slo_seconds
        improved_p99 = window.p99 is not None and base.p99 is not None and window.p99 < base.p99
        base_breached = base.p99 is not None and base.p99 > slo
        if trial.proposal.kind == "backoff":
            slo_ok = window.p99 is None or window.p99 <= slo
            return None if slo_ok or improved_p99 else ("p99 did not come down", False)
        if window.p99 is not None and window.p99 > slo:
            # Already over the SLO before the change (overload): the change may not make p99
            # worse beyond the noise; otherwise it must keep p99 within the SLO.
            tolerated = base.p99 * (1 + trial.margins["throughput"]) if base_breached and base.p99 else slo
            if window.p99 > tolerated:
                return f"p99 {window.p99 * 1000:.1f} ms breaks the SLO" + (
                    " and is worse than before" if base_breached else ""
                ), False
        metric = self._objective(base)
        before, after, margin = getattr(base, metric), getattr(window, metric), trial.margins[metric]
        if trial.proposal.kind == "explore":
            needed = _to_beat(trial, margin)
            if after > before * (1 + needed):
                return None
            return f"{metric} {after:.1f}/s did not beat {before:.1f}/s by the {needed:.0%} noise margin", True
        if after >= before * (1 - margin):
            return None
        return f"{metric} fell from {before:.1f}/s to {after:.1f}/s", False

    def _abandon_trial(self, now: float, why: str) -> None:
        """Ends a trial in flight, if any, before its verdict: its change is reverted but not
        counted against its direction (nothing was learnt about it)."""
        trial = self._trial
        if trial is not None:
            window = self._measure(trial.start, now) or trial.baseline
            # An interleaving switches the change on and off: it is in force while its window runs.
            in_force = self._interleaving is None or self._interleaving.next_is_new
            self._revert(trial, window, now, why, judged=False, in_force=in_force)

    def _revert(
        self,
        trial: _Trial,
        window: Measurement,
        now: float,
        why: str,
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
            now,
            knob,
            "revert",
            trial.proposal.value,
            trial.previous[knob],
            f"{trial.proposal.reason}; {why}",
            trial.baseline,
            window,
        )
        if window.oom and trial.proposal.value > trial.previous[knob]:
            # Raising it ran out of memory: it stays below that value for good, not only until
            # the refused direction is forgotten (another knob's keep, a shift).
            self._learn_ceiling(knob, trial.proposal.value - 1)
        if judged:
            direction = self._direction(trial.proposal, trial.previous[knob])
            self._rejected.add(direction)
            self._reverts[knob].append(now)
            if no_gain and not trial.proposal.past:
                self._no_gain.add(direction[:3])
            if trial.proposal.kind == "explore":
                self._count_miss(now)
        self._finish(now, settled_from=now + self.settings.warmup_seconds)

    def _after_set(self, now: float) -> float:
        """The time a set just made took effect: `now`, or later when the set took a while."""
        return max(now, self._clock()) if self._clock is not None else now

    def _count_miss(self, now: float) -> None:
        """The stop rule: `explore_patience` explore trials in a row that did not pay say the
        tuner stands on the optimum, or on a plateau whose points the noise cannot tell
        apart; each further trial there only costs goodput."""
        self._misses += 1
        if self._converged_at is None and self._misses >= self.settings.explore_patience:
            self._converged_at = now
            self._decide(
                now,
                "*",
                "converge",
                None,
                None,
                f"{self._misses} explore trials in a row did not pay: no explore move until a workload "
                f"shift, `gputuned tune --resume` or {self.settings.reexplore_seconds:g} s from now",
            )

    def _learn_ceiling(self, knob: str, highest: int) -> None:
        self._ceilings[knob] = min(self._ceilings.get(knob, highest), highest)

    def _finish(self, now: float, settled_from: float) -> None:
        self._turn.release(now)
        self._trial = None
        self._phase, self._until = Phase.COOLDOWN, now + self.settings.cooldown_seconds
        self._settled_from = settled_from
