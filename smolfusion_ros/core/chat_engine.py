"""The chat engine: loads the LLM in the background and answers requests on its own thread.

Nothing here runs on a ROS executor thread. Callers `submit()` a request and get a ChatJob
back at once; a single worker thread generates answers in order (llama.cpp contexts are not
thread-safe, and on small machines one model at a time is fastest). A bounded queue rejects
overload with a clear message instead of letting latency grow without limit.

First-token time stays flat over a long conversation because the prompt keeps a stable
prefix (core.prompt: persona + summary + history, volatile scene text in the last message),
the history window slides in blocks that the summary folds at the same time
(core.sessions.plan_window), each session's KV state survives interleaving (the back end's
use_session), and background work (summaries, re-evaluating a session's new prefix after a
summary, speculative prefill) gives way to a waiting request within one decode step.
A new summary does not reach the session's prompts at once: they keep the previous summary
(and the turns just folded, verbatim) while the new prefix is evaluated in idle time under a
side name in the back end, then switch in one step (_SummarySwitch), so no question pays
for re-evaluating its conversation because a summary changed.

A visual turn asks the vision model first, off this thread (VisionWorker.ask_async): the
engine answers other turns meanwhile and evaluates the visual job's stable prefix; when the
vision answer arrives the job enters the LLM queue in submission order (ahead of jobs
submitted after it that have not started), its context block carrying the answer.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from smolfusion_ros.backends.llm.base import GenerationSettings, Interrupt, LLMBackend
from smolfusion_ros.core.jobs import ChatJob, ChatResult, TokenListener
from smolfusion_ros.core.personas import PersonaBook
from smolfusion_ros.core.prompt import PromptTooLongError, build_messages, context_block
from smolfusion_ros.core.requests import (
    ChatRequest,
    RequestLimits,
    RequestRejected,
    normalise_request,
)
from smolfusion_ros.core.routing import VisualTurnClassifier
from smolfusion_ros.core.scene import VisionUnavailable, VisionWorker, VisualQuestion
from smolfusion_ros.core.sessions import (
    InMemorySessionStore,
    SessionStore,
    TurnRecord,
    WindowPlan,
    plan_window,
)
from smolfusion_ros.core.summaries import build_summary_messages
from smolfusion_ros.core.worker import WorkerThread
from smolfusion_ros.dialogue.rules import RuleBook

log = logging.getLogger(__name__)

# A speculative prefill's scene text is reused by the real request with the same words
# within this time, so that request's prompt is exactly the one already evaluated.
PREFILL_REUSE_S = 10.0
# Context blocks remembered per evaluated user turn (bounded; see keep_context_in_history).
MAX_REMEMBERED_CONTEXTS = 4096
# The summary folds at most this many blocks in one pass (its prompt must fit the context).
MAX_FOLD_BLOCKS = 4
# Back-end session of the summaries: named (not ""), so that the back end keeps its state
# when a request preempts a summary, which then goes on where it stopped.
SCRATCH_SESSION = "\x00summaries"
# Sessions whose prompts wait for a new summary's prefix at once (older ones switch at once).
MAX_SUMMARY_SWITCHES = 256
# (persona id, the person's words) -> (context text for the prompt, ids of the chunks in it);
# ("", []) when nothing relevant. Called on the engine thread just before the prompt is built.
KnowledgeLookup = Callable[[str, str], tuple[str, list[str]]]


# What the worker takes when no job is ready but background work is due.
_BACKGROUND = "background work"


def next_prefix_session(session_id: str) -> str:
    """The back-end session under which a session's next prefix (new summary) is built."""
    return f"\x00next-prefix:{session_id}"


@dataclass(frozen=True)
class _SummarySwitch:
    """A summary that landed while the session's prompts still use the previous one."""

    shown: tuple[str, int]  # (text, last turn covered) the prompts use until the switch
    new: tuple[str, int]  # what the store holds: the prompts switch once it is evaluated


class EngineState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class EngineSettings:
    limits: RequestLimits = RequestLimits()
    max_pending: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    seed: int = -1
    # Turns folded into the summary at once, also the step the history window slides by
    # (0 = no summaries; the window then slides by half its size).
    summary_batch: int = 6
    summary_max_tokens: int = 120
    vision_timeout_s: float = 30.0
    # Keep each user turn's context block (what the robot saw then) in the history text, so
    # the next prompt repeats the evaluated tokens exactly and the prefix cache holds.
    keep_context_in_history: bool = True
    # After a summary rewrites a session's prefix, evaluate the new prefix in idle time (and,
    # where the back end keeps session states, only then let the prompts use the summary).
    warm_after_summary: bool = True


@dataclass
class EngineStats:
    served: int = 0
    cancelled: int = 0
    failed: int = 0
    rejected: int = 0
    last_ttft_s: float = 0.0
    last_tokens_per_s: float = 0.0
    summaries: int = 0
    summaries_preempted: int = 0
    prefills: int = 0
    prefills_preempted: int = 0
    warmups: int = 0
    # New summaries that reached the prompts: once their prefix was evaluated in the
    # background, or forced (the previous summary's window would have had to slide).
    summary_switches: int = 0
    summary_switches_forced: int = 0
    vision_timeouts: int = 0
    # Prompt tokens the back end evaluated for the last answer (0 = all were cached).
    last_prompt_tokens: int = 0
    rules: int = 0  # answers given by the rule book (no LLM)
    knowledge_failures: int = 0  # knowledge lookups that failed (answered without documents)


class ChatEngine:
    def __init__(
        self,
        backend: LLMBackend,
        personas: PersonaBook,
        sessions: SessionStore | None = None,
        settings: EngineSettings | None = None,
        vision: VisionWorker | None = None,
        classifier: VisualTurnClassifier | None = None,
        on_loaded: Callable[[EngineState, str], None] | None = None,
        rules: RuleBook | None = None,
        knowledge: KnowledgeLookup | None = None,
        reload_personas: Callable[[], PersonaBook] | None = None,
        language_of: Callable[[str], str] | None = None,
    ) -> None:
        self.backend = backend
        self.personas = personas
        # Dialogue layer (all optional): rule answers given before the LLM queue, knowledge
        # retrieval for the prompt's context block, and operator personas created while the
        # node runs (re-read on an unknown persona id).
        self._rules = rules
        self._knowledge = knowledge
        self._reload_personas = reload_personas
        self._language_of = language_of or (lambda _persona: "")
        self.sessions = sessions or InMemorySessionStore()
        self.settings = settings or EngineSettings()
        self._vision = vision
        self._classifier = classifier or VisualTurnClassifier()
        # Told once, from the engine thread, when loading ends (READY or FAILED, with detail).
        self._on_loaded = on_loaded or (lambda _state, _detail: None)
        # Jobs ready for the LLM, by submission order; visual jobs waiting for the vision
        # model. Both count against max_pending. Guarded by _cond (the worker's).
        # Not a BoundedQueue: a visual job re-enters by submission order (a heap), and the
        # bound (max_pending) spans both collections.
        self._cond = threading.Condition()
        self._ready: list[tuple[int, ChatJob]] = []
        self._awaiting_vision: dict[str, tuple[ChatJob, VisualQuestion, float]] = {}
        self._order = itertools.count()
        self._job_order: dict[str, int] = {}
        self._state = EngineState.LOADING
        self._state_detail = ""
        self._load_started = time.monotonic()
        self._observers: list[TokenListener] = []
        self._done_observers: list[Callable[[ChatJob], None]] = []
        self._stop_reason = "the node is shutting down"
        # Background work, done only while no job is ready, highest priority first:
        # speculative prefill (newest only), sessions whose prefix should be evaluated
        # (a visual job's while the vision model looks; a session's after its summary),
        # sessions whose older turns wait to be folded into their summary.
        self._prefill_pending: ChatRequest | None = None
        self._warm_due: OrderedDict[str, None] = OrderedDict()
        self._summary_due: set[str] = set()
        # Set when higher-priority work arrives: background work stops within one small
        # prompt chunk or one decode step.
        # An Interrupt: the llama.cpp back end aborts a running background decode when set.
        self._preempt = Interrupt()
        # Sessions whose prompts still use their previous summary (engine thread only).
        self._switches: OrderedDict[str, _SummarySwitch] = OrderedDict()
        # (session, text) -> (scene text, time) of the last speculative prefill.
        self._prefilled: tuple[str, str, str, float] | None = None
        # (session, stamp, words) -> the user message as evaluated (context block + words).
        self._evaluated: OrderedDict[tuple[str, float, str], str] = OrderedDict()
        self.stats = EngineStats()
        # One thread loads the model, then answers jobs and does background work in the gaps.
        self._worker: WorkerThread[ChatJob | str] = WorkerThread(
            "chat-engine",
            take=self._take,
            process=self._process,
            wait_s=self._next_vision_deadline,
            setup=self._load,
            on_error=self._failed,
            cond=self._cond,
            preempt=self._preempt,
        )

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 5.0, reason: str = "the node is shutting down") -> None:
        """The running answer stops before its next token, background work is preempted,
        every waiting caller gets success=false with `reason`; the model is freed only once
        the worker has left it (freed under a slow load or decode, the process crashes)."""
        self._stop_reason = reason
        self._worker.request_stop()  # nothing is taken from here on; _preempt is set
        # Fail everything queued or waiting for vision so no caller waits forever.
        with self._cond:
            current = self._worker.current
            waiting = [job for _, job in self._ready]
            waiting += [job for job, _, _ in self._awaiting_vision.values()]
            for _job, question, _deadline in self._awaiting_vision.values():
                self._vision.withdraw(question)
            self._ready.clear()
            self._awaiting_vision.clear()
        if isinstance(current, ChatJob):
            current.cancel(reason)
        for job in waiting:
            self._finish(job, ChatResult(False, reason, request_id=job.request_id))
        self._worker.stop(timeout, then=self.backend.close)
        self._state = EngineState.STOPPED

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def state_detail(self) -> str:
        return self._state_detail

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._awaiting_vision)

    @property
    def busy(self) -> bool:
        """An answer is being generated (background work does not count)."""
        return isinstance(self._worker.current, ChatJob)

    def add_token_observer(self, observer: TokenListener) -> None:
        """Called for every token of every answer (e.g. to publish response_stream)."""
        self._observers.append(observer)

    def add_done_observer(self, observer: Callable[[ChatJob], None]) -> None:
        """Called once per finished job, whatever its outcome."""
        self._done_observers.append(observer)

    # ------------------------------------------------------------------- submit
    def submit(self, request: ChatRequest, listener: TokenListener | None = None) -> ChatJob:
        """Validate and queue a request. Raises RequestRejected with the reason."""
        try:
            request = normalise_request(request, self.settings.limits)
            persona_id = request.persona
            if persona_id and self.personas.get(persona_id) is None and self._reload_personas:
                self.personas = self._reload_personas()  # created since the last read?
            if persona_id and self.personas.get(persona_id) is None:
                raise RequestRejected(
                    f"unknown persona {persona_id!r} (known: {', '.join(self.personas.ids())})"
                )
            if request.use_vision == "always" and self._vision is None:
                raise RequestRejected("use_vision=always, but this profile has no vision back end")
            job = ChatJob(request, [*self._observers, *([listener] if listener else [])])
            for observer in self._done_observers:
                job.add_done_callback(observer)
            # A configured intent is answered at once, without the model (even while it loads).
            if self._rules is not None and self._answer_by_rule(job):
                return job
            self._check_ready()
            visual = (
                self._vision is not None
                and self._classifier.route(request.text, request.use_vision).visual
            )
            with self._cond:
                if len(self._ready) + len(self._awaiting_vision) >= self.settings.max_pending:
                    raise RequestRejected(
                        f"busy: {self.settings.max_pending} requests are already waiting; "
                        "try again shortly"
                    )
                self._job_order[job.request_id] = next(self._order)
                if visual:
                    self._ask_vision(job)
                else:
                    self._make_ready(job)
            return job
        except RequestRejected:
            self.stats.rejected += 1
            raise

    def prefill(self, request: ChatRequest) -> bool:
        """Evaluate, in idle time, the prompt `request` would get, without answering it.

        For speculative starts (a person pauses mid-utterance): the prompt is built exactly
        as for a real answer (persona, summary, history window, the newest scene in the
        context block) and evaluated into the session's KV cache; nothing is generated,
        stored or emitted. It runs as low-priority background work: any real request
        preempts it (within one small prompt chunk), and a newer prefill replaces an older
        one that is pending or running. A real request with the same session and words
        within PREFILL_REUSE_S then reuses the prefill's scene text, so its prompt is
        identical and only the last token or so is evaluated. Visual turns prefill their
        stable prefix only (the vision answer is not known yet).

        Returns False (and does nothing) when the request is invalid, the model is not
        ready, or the back end cannot prefill.
        """
        if not hasattr(self.backend, "prefill"):
            return False
        try:
            request = normalise_request(request, self.settings.limits)
            self._check_ready()
        except RequestRejected:
            return False
        with self._cond:
            self._prefill_pending = request
            self._preempt.set()  # a running older prefill (or summary) gives way
            self._cond.notify_all()
        return True

    def _answer_by_rule(self, job: ChatJob) -> bool:
        """Answer `job` from the rule book if its words are a configured intent; stored in
        the session like any other turn (source=rule). On the caller's thread."""
        request = job.request
        persona_id = request.persona or self.sessions.persona_of(request.session_id)
        persona = self.personas.get(persona_id) or self.personas.get("")
        match = self._rules.match(request.text, self._language_of(persona.persona_id))
        if match is None:
            return False
        now = time.time()
        latency = time.monotonic() - job.submitted_at
        self.sessions.append(
            request.session_id,
            persona.persona_id,
            TurnRecord("user", request.text, request.source, job.submitted_wall),
            TurnRecord("assistant", match.answer, "rule", now, latency),
        )
        job.emit(match.answer, match.answer, 1, self._listener_error)
        self.stats.rules += 1
        result = ChatResult(
            success=True,
            reply=match.answer,
            source="rule",
            request_id=job.request_id,
            session_id=request.session_id,
            persona=persona.persona_id,
            ttft_s=latency,
            latency_s=time.monotonic() - job.submitted_at,
            tokens=1,
        )
        self._finish(job, result)
        return True

    def _make_ready(self, job: ChatJob) -> None:
        """Caller holds _cond."""
        order = self._job_order.pop(job.request_id, next(self._order))
        heapq.heappush(self._ready, (order, job))
        # Its answer evaluates the session's prefix anyway.
        self._warm_due.pop(job.request.session_id, None)
        self._preempt.set()  # background work gives way to a person waiting
        self._cond.notify_all()

    def _ask_vision(self, job: ChatJob) -> None:
        """Send a visual job to the vision worker; it joins the LLM queue when answered.
        Caller holds _cond."""
        try:
            question = self._vision.ask_async(job.request.text, on_done=self._vision_answered)
        except VisionUnavailable as exc:
            job.vision_text = self._no_sight(str(exc))
            self._make_ready(job)
            return
        deadline = time.monotonic() + self.settings.vision_timeout_s
        self._awaiting_vision[id(question)] = (job, question, deadline)
        # Meanwhile the engine may evaluate the job's stable prefix.
        self._warm_due[job.request.session_id] = None
        self._warm_due.move_to_end(job.request.session_id, last=False)
        self._cond.notify_all()

    def _vision_answered(self, question: VisualQuestion) -> None:
        """On the vision thread: the answer (or failure) arrived; the job may go on."""
        with self._cond:
            entry = self._awaiting_vision.pop(id(question), None)
            if entry is None:  # timed out and withdrawn already, or shutting down
                return
            job = entry[0]
            if question.result is not None:
                job.vision_text, job.vision_used = question.result.text, True
            else:
                job.vision_text = self._no_sight(question.error or "no answer")
            self._make_ready(job)

    @staticmethod
    def _no_sight(reason: str) -> str:
        # Explicit, so a small model does not invent a scene (it did with a vaguer text).
        return (
            f"nothing. No camera image is available right now ({reason}). If you are asked "
            "what you see, say that you can't see anything right now; never describe a scene"
        )

    def _expire_vision(self) -> None:
        """Withdraw visual questions past vision_timeout_s (their jobs go on without sight).
        Caller holds _cond."""
        now = time.monotonic()
        for key, (job, question, deadline) in list(self._awaiting_vision.items()):
            if now >= deadline:
                del self._awaiting_vision[key]
                self._vision.withdraw(question)
                self.stats.vision_timeouts += 1
                job.vision_text = self._no_sight(
                    f"no visual answer within {self.settings.vision_timeout_s} s"
                )
                self._make_ready(job)

    def _next_vision_deadline(self) -> float | None:
        """Seconds until the nearest visual job expires; None when none waits (the worker
        sleeps until woken). Caller holds _cond."""
        if not self._awaiting_vision:
            return None
        nearest = min(deadline for _job, _question, deadline in self._awaiting_vision.values())
        return max(0.0, nearest - time.monotonic())

    def _check_ready(self) -> None:
        if self._state is EngineState.LOADING:
            waited = time.monotonic() - self._load_started
            raise RequestRejected(f"the language model is still loading ({waited:.1f} s so far)")
        if self._state is EngineState.FAILED:
            raise RequestRejected(f"the language model failed to load: {self._state_detail}")
        if self._state is EngineState.STOPPED or self._worker.stopping:
            raise RequestRejected(self._stop_reason)

    # ------------------------------------------------------------------- worker
    def _load(self) -> bool:
        """The worker's setup: load the model and report READY or FAILED."""
        try:
            self.backend.load()
        except Exception as exc:
            self._state_detail = str(exc)
            self._state = EngineState.FAILED
            self._on_loaded(self._state, self._state_detail)
            return False
        self._state_detail = (
            f"{self.backend.model_name} loaded in {time.monotonic() - self._load_started:.2f} s"
        )
        self._state = EngineState.READY
        self._on_loaded(self._state, self._state_detail)
        return True

    def _take(self) -> ChatJob | str | None:
        """The next ready job; else _BACKGROUND when background work is due; else None
        (the worker sleeps until woken or the nearest visual deadline). Caller holds _cond."""
        self._expire_vision()
        if self._ready:
            return heapq.heappop(self._ready)[1]
        if self._prefill_pending or self._warm_due or self._summary_due:
            self._preempt.clear()
            return _BACKGROUND
        return None

    def _process(self, item: ChatJob | str) -> None:
        if isinstance(item, ChatJob):
            self._answer(item)
        else:
            self._background_step()

    def _failed(self, item: ChatJob | str, exc: Exception) -> None:
        """The worker goes on whatever happens; a failed answer tells its caller why."""
        if not isinstance(item, ChatJob):
            log.warning("background work failed: %s", exc)
            return
        log.error("generation failed", exc_info=exc)
        self._finish(
            item, ChatResult(False, f"generation failed: {exc}", request_id=item.request_id)
        )

    def _background_step(self) -> None:
        """One unit of background work; gives way when a job becomes ready."""
        with self._cond:
            request, self._prefill_pending = self._prefill_pending, None
            warm = next(iter(self._warm_due), None) if request is None else None
            if warm is not None:
                del self._warm_due[warm]
        if request is not None:
            self._speculative_prefill(request)
        elif warm is not None:
            self._warm(warm)
        elif self._summary_due:
            self._summarize_next()

    def _use_session(self, session_id: str) -> None:
        use = getattr(self.backend, "use_session", None)
        if use is not None:
            use(session_id)

    def _generation(self, max_tokens: int, **overrides) -> GenerationSettings:
        values = dict(
            max_tokens=max_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            top_k=self.settings.top_k,
            repeat_penalty=self.settings.repeat_penalty,
            seed=self.settings.seed,
        )
        return GenerationSettings(**(values | overrides))

    # ----------------------------------------------------------------- prompts
    def _block(self) -> int:
        window = max(1, self.sessions.window_turns)
        return self.settings.summary_batch or max(1, window // 2)

    def _window(self, session_id: str, up_to: int | None = None) -> WindowPlan:
        """The window after the summary covering turns up to `up_to` (None: the stored
        summary, which decides what is due for folding)."""
        if up_to is None:
            up_to = self.sessions.summary(session_id)[1]
        window, block = max(1, self.sessions.window_turns), self._block()
        # Enough turns that the block boundaries stay anchored even when folding lags.
        recent = self.sessions.history(session_id, max_turns=max(64, 4 * (window + block)))
        unsummarised = [turn for turn in recent if turn.turn_id > up_to]
        return plan_window(unsummarised, window, block, self.settings.summary_batch > 0)

    def _as_evaluated(self, session_id: str, turn: TurnRecord) -> TurnRecord:
        """A history turn as the model saw it (with the context block it was asked with)."""
        if turn.role != "user" or not self.settings.keep_context_in_history:
            return turn
        text = self._evaluated.get((session_id, turn.stamp, turn.text))
        return dataclasses.replace(turn, text=text) if text else turn

    def _remember_evaluated(self, session_id: str, turn: TurnRecord, scene: str) -> None:
        if not (self.settings.keep_context_in_history and scene):
            return
        key = (session_id, turn.stamp, turn.text)
        self._evaluated[key] = f"{context_block(scene)}\n{turn.text}"
        while len(self._evaluated) > MAX_REMEMBERED_CONTEXTS:
            self._evaluated.popitem(last=False)

    # ------------------------------------------------------- summary switches
    def _defers_summaries(self) -> bool:
        """Whether a new summary can wait for its prefix: the back end keeps session states
        and can hand one over (else the prompts switch at once, as the old state is lost
        anyway when the new prefix is evaluated)."""
        backend = self.backend
        return (
            self.settings.warm_after_summary
            and hasattr(backend, "prefill")
            and hasattr(backend, "move_session")
            and bool(getattr(backend, "keeps_sessions", False))
        )

    def _switch_of(self, session_id: str) -> _SummarySwitch | None:
        switch = self._switches.get(session_id)
        if switch is not None and self.sessions.summary(session_id) != switch.new:
            # Cleared or rewritten elsewhere meanwhile: the store is the truth.
            self._drop_switch(session_id)
            return None
        return switch

    def _drop_switch(self, session_id: str) -> None:
        if self._switches.pop(session_id, None) is not None:
            forget = getattr(self.backend, "forget_session", None)
            if forget is not None:
                forget(next_prefix_session(session_id))

    def _complete_switch(self, session_id: str, forced: bool = False) -> None:
        """The prompts use the stored summary from now on, with the state built for it."""
        if self._switches.pop(session_id, None) is None:
            return
        self.backend.move_session(next_prefix_session(session_id), session_id)
        self.stats.summary_switches += 1
        self.stats.summary_switches_forced += int(forced)

    def _prompt_plan(self, session_id: str) -> tuple[str, WindowPlan]:
        """The summary text and the window of turns the session's next prompt carries."""
        switch = self._switch_of(session_id)
        if switch is None:
            text, up_to = self.sessions.summary(session_id)
            return text, self._window(session_id, up_to)
        plan = self._window(session_id, switch.shown[1])
        if not plan.hidden:
            return switch.shown[0], plan
        # The previous summary's window would now have to slide (drop turns): that changes
        # the prefix anyway, so switch now; the question evaluates what the background has
        # not evaluated yet of the new prefix.
        self._complete_switch(session_id, forced=True)
        text, up_to = self.sessions.summary(session_id)
        return text, self._window(session_id, up_to)

    def _messages(
        self, request: ChatRequest, persona, scene: str, notes: tuple[str, ...] = ()
    ) -> list:
        """The prompt for `request`: raises PromptTooLongError."""
        session_id = request.session_id
        summary, plan = self._prompt_plan(session_id)
        return build_messages(
            persona.render_system_prompt(),
            [self._as_evaluated(session_id, turn) for turn in plan.shown],
            request.text,
            scene_text=scene,
            notes=notes,
            summary_text=summary,
            context_size=self.backend.context_size,
            reserve_tokens=request.max_tokens,
            count_tokens=self.backend.count_tokens,
        )

    def _persona(self, request: ChatRequest):
        persona_id = request.persona or self.sessions.persona_of(request.session_id)
        return self.personas.get(persona_id) or self.personas.get("")

    def _scene_for(self, job: ChatJob) -> tuple[str, bool]:
        """What the LLM is told about the camera: the vision model's answer for a visual
        turn (resolved before the job was queued), else the newest scene description
        (or the one a speculative prefill of the same words used). (text, vision used)"""
        if self._vision is None:
            # No vision back end: a question about sight gets told so, never nothing at all.
            if self._classifier.route(job.request.text, job.request.use_vision).visual:
                return self._no_sight("this robot has no camera configured"), False
            return "", False
        self._vision.yield_to_llm()
        if job.vision_text is not None:
            return job.vision_text, job.vision_used
        request = job.request
        if request.use_vision == "never":
            return "", False
        prefilled = self._prefilled
        if (
            prefilled is not None
            and prefilled[:2] == (request.session_id, request.text)
            and time.monotonic() - prefilled[3] < PREFILL_REUSE_S
        ):
            return prefilled[2], bool(prefilled[2])
        text = self._vision.scene_text()
        if not text:
            # Vision is configured but nothing fresh was seen: say so explicitly, or the model
            # answers "Yes, I can see you" from nothing (measured with Qwen2.5-1.5B).
            return self._no_sight("no recent camera frame"), False
        return text, bool(text)

    # ------------------------------------------------------------------ answers
    def _answer(self, job: ChatJob) -> None:
        request = job.request
        job.expire_if_due()  # nobody waits any more: finished failed, never generated
        if job.cancelled:
            self._finish(job, self._result(job, "", 0, None, cancelled=True))
            return
        persona = self._persona(request)
        scene, scene_used = self._scene_for(job)
        notes, knowledge_ids = self._knowledge_for(persona.persona_id, request.text)
        try:
            messages = self._messages(request, persona, scene, notes)
        except PromptTooLongError as exc:
            self._finish(job, ChatResult(False, str(exc), request_id=job.request_id))
            return
        self._use_session(request.session_id)
        parts: list[str] = []
        first_token_at = None
        for delta in self.backend.stream_chat(
            messages, self._generation(request.max_tokens), job.cancel_event
        ):
            if first_token_at is None:
                first_token_at = time.monotonic()
                self.stats.last_prompt_tokens = getattr(self.backend, "prompt_tokens_evaluated", 0)
            parts.append(delta)
            job.emit(delta, "".join(parts), len(parts), self._listener_error)
            job.expire_if_due()  # the backend stops before the next token once it has passed
        reply = "".join(parts).strip()
        cancelled = job.cancelled
        if reply or cancelled:
            user_turn = TurnRecord("user", request.text, request.source, job.submitted_wall)
            turns = [user_turn]
            if reply:
                latency = time.monotonic() - job.submitted_at
                turns.append(TurnRecord("assistant", reply, "llm", time.time(), latency))
            self.sessions.append(request.session_id, persona.persona_id, *turns)
            self._remember_evaluated(request.session_id, user_turn, scene)
            if self.settings.summary_batch > 0 and self._window(request.session_id).fold:
                self._summary_due.add(request.session_id)
            if request.session_id in self._switches:
                with self._cond:  # the next prefix, still being built, grew by this turn
                    self._warm_due.setdefault(request.session_id, None)
        result = self._result(
            job, reply, len(parts), first_token_at, cancelled, persona.persona_id, scene_used
        )
        self._finish(
            job, dataclasses.replace(result, scene_text=scene, knowledge_ids=knowledge_ids)
        )

    def _knowledge_for(self, persona_id: str, text: str) -> tuple[tuple[str, ...], tuple]:
        """(context notes, chunk ids) from the persona's knowledge base; nothing on failure
        (an answer without the documents beats no answer)."""
        if self._knowledge is None:
            return (), ()
        try:
            context, ids = self._knowledge(persona_id, text)
        except Exception as exc:
            log.warning("knowledge lookup failed: %s", exc)
            self.stats.knowledge_failures += 1
            return (), ()
        if not context:
            return (), ()
        return (context,), tuple(ids)

    # --------------------------------------------------------- background work
    def _speculative_prefill(self, request: ChatRequest) -> None:
        visual = (
            self._vision is not None
            and self._classifier.route(request.text, request.use_vision).visual
        )
        if visual:
            self._warm(request.session_id)
            return
        scene = ""
        if self._vision is not None and request.use_vision != "never":
            scene = self._vision.scene_text()
        try:
            messages = self._messages(request, self._persona(request), scene)
        except PromptTooLongError:
            return
        self._use_session(request.session_id)
        self._prefilled = (request.session_id, request.text, scene, time.monotonic())
        self.backend.prefill(messages, self._generation(1, preemptible=True), self._preempt)
        if self._preempt.is_set():
            self.stats.prefills_preempted += 1
        else:
            self.stats.prefills += 1

    def _warm(self, session_id: str) -> None:
        """Evaluate the session's stable prefix (system message and history) in idle time,
        so its next answer evaluates only the new message. While a new summary waits
        (_SummarySwitch), the prefix with the new summary is built under a side name, and
        the prompts switch to it once it is complete."""
        if not hasattr(self.backend, "prefill"):
            return
        persona = self.personas.get(self.sessions.persona_of(session_id)) or self.personas.get("")
        switch = self._switch_of(session_id)
        if switch is not None:
            summary = switch.new[0]
            plan = self._window(session_id, switch.new[1])
            target = next_prefix_session(session_id)
        else:
            summary, plan = self._prompt_plan(session_id)
            target = session_id
        if not plan.shown and not summary:
            return  # nothing beyond the persona prompt; not worth a context switch
        try:
            messages = build_messages(
                persona.render_system_prompt(),
                [self._as_evaluated(session_id, turn) for turn in plan.shown],
                "",
                summary_text=summary,
                context_size=self.backend.context_size,
                reserve_tokens=min(256, self.backend.context_size // 4),
                count_tokens=self.backend.count_tokens,
            )[:-1]  # without the empty question: its template tokens differ anyway
        except PromptTooLongError:
            if switch is not None:
                self._complete_switch(session_id, forced=True)
            return
        self._use_session(target)
        self.backend.prefill(messages, self._generation(1, preemptible=True), self._preempt)
        if not self._preempt.is_set():
            self.stats.warmups += 1
            if switch is not None:
                self._complete_switch(session_id)
            return
        with self._cond:  # try again when idle, unless an answer in this session comes first
            if session_id not in [job.request.session_id for _, job in self._ready]:
                self._warm_due.setdefault(session_id, None)

    def _summarize_next(self) -> None:
        """Fold one due session's oldest block of turns into its summary; give way to any
        request (the summary's prompt is evaluated in small preemptible chunks)."""
        session_id = self._summary_due.pop()
        plan = self._window(session_id)
        if not plan.fold:
            return
        unsummarised = len(plan.shown) + plan.hidden
        turns = self.sessions.turns_to_fold(session_id, keep=max(1, unsummarised - plan.fold))
        turns = turns[: MAX_FOLD_BLOCKS * self._block()]
        if not turns:
            return
        previous, _ = self.sessions.summary(session_id)
        shown = self._switch_of(session_id)
        shown = shown.shown if shown is not None else self.sessions.summary(session_id)
        messages = build_summary_messages(previous, turns)
        self._use_session(SCRATCH_SESSION)
        try:
            parts = list(
                self.backend.stream_chat(
                    messages,
                    self._generation(
                        self.settings.summary_max_tokens, temperature=0.2, preemptible=True
                    ),
                    self._preempt,
                )
            )
        except Exception as exc:
            log.warning("summary of session %s failed: %s", session_id, exc)
            return
        if self._preempt.is_set():
            self.stats.summaries_preempted += 1
            self._summary_due.add(session_id)  # try again when idle
            return
        text = "".join(parts).strip()
        if text:
            self.sessions.set_summary(session_id, text, turns[-1].turn_id)
            self.stats.summaries += 1
            if self._defers_summaries():
                # The prompts keep `shown` until the new prefix is evaluated (_warm).
                self._switches[session_id] = _SummarySwitch(shown, (text, turns[-1].turn_id))
                self._switches.move_to_end(session_id)
                while len(self._switches) > MAX_SUMMARY_SWITCHES:
                    self._complete_switch(next(iter(self._switches)), forced=True)
            if self._window(session_id).fold:
                self._summary_due.add(session_id)  # more to fold (it lagged behind)
            elif self.settings.warm_after_summary:
                with self._cond:
                    self._warm_due.setdefault(session_id, None)

    def _result(
        self,
        job: ChatJob,
        reply: str,
        tokens: int,
        first_token_at: float | None,
        cancelled: bool,
        persona: str = "",
        scene_used: bool = False,
    ) -> ChatResult:
        now = time.monotonic()
        ttft = (first_token_at - job.submitted_at) if first_token_at else 0.0
        if not reply and not cancelled:
            return ChatResult(
                False,
                "the model produced no text",
                request_id=job.request_id,
                session_id=job.request.session_id,
                latency_s=now - job.submitted_at,
            )
        return ChatResult(
            success=not cancelled,
            error="cancelled" if cancelled else "",
            reply=reply,
            request_id=job.request_id,
            session_id=job.request.session_id,
            persona=persona,
            scene_used=scene_used,
            cancelled=cancelled,
            ttft_s=ttft,
            latency_s=now - job.submitted_at,
            tokens=tokens,
        )

    def _finish(self, job: ChatJob, result: ChatResult) -> None:
        if result.cancelled:
            self.stats.cancelled += 1
        elif result.success:
            self.stats.served += 1
            self.stats.last_ttft_s = result.ttft_s
            gen_time = result.latency_s - result.ttft_s
            if result.tokens > 1 and gen_time > 0:
                self.stats.last_tokens_per_s = (result.tokens - 1) / gen_time
        else:
            self.stats.failed += 1
        job.finish(result, self._listener_error)

    @staticmethod
    def _listener_error(exc: Exception) -> None:
        log.warning("a token or result listener failed: %s", exc)
