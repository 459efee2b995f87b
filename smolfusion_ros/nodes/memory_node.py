"""memory_node: conversation memory in one SQLite file, behind ROS services.

Services:   ~/append_turn (AppendTurn; success = committed to disk; a retry with the same
            append_id stores nothing new and returns the first turn_id), ~/get_history
            (GetHistory), ~/list_sessions (ListSessions), ~/clear_session (ClearSession),
            ~/export_session (ExportSession), ~/search_memory (SearchMemory)
Publishes:  memory_events (MemoryEvent, after each append or clear; turns that other
            processes such as fusion_node write to the same file are announced too),
            /diagnostics (every diagnostics_period_s, 1 s)
Parameters: database_path (empty = $ROS_HOME/smolfusion_ros/memory.db), max_turn_chars,
            default_history_turns, synchronous (FULL or NORMAL), watch_period_s,
            diagnostics_period_s

Every call returns success=false with an error text on bad input; the node never dies on a
request. A managed node (nodes/managed.py): the file is opened in configure and closed in
cleanup; while not active every service answers success=false, "node is inactive". A database
that cannot be opened fails configure with one clear line (at autostart: exit 2).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup

from smolfusion_ros import paths
from smolfusion_ros.core.requests import RequestRejected
from smolfusion_ros.memory.store import MemoryStore, MemoryStoreError, SessionInfo, StoredTurn
from smolfusion_ros.msg import MemoryEvent, Turn
from smolfusion_ros.msg import SessionInfo as SessionInfoMsg
from smolfusion_ros.nodes.conversions import stamp_from_wall
from smolfusion_ros.nodes.diagnostics import (
    DIAGNOSTICS_PERIOD_SPEC,
    create_diagnostics,
    diagnostic_array,
)
from smolfusion_ros.nodes.managed import AUTOSTART_SPEC, ManagedNode
from smolfusion_ros.nodes.parameters import (
    STARTUP,
    ConfigError,
    ParamSpec,
    between,
    declare_parameter_specs,
    one_of,
    read_parameters,
)
from smolfusion_ros.nodes.runner import run_node
from smolfusion_ros.srv import (
    AppendTurn,
    ClearSession,
    ExportSession,
    GetHistory,
    ListSessions,
    SearchMemory,
)


def turn_to_msg(turn: StoredTurn) -> Turn:
    return Turn(
        turn_id=turn.turn_id,
        stamp=stamp_from_wall(turn.stamp),
        session_id=turn.session_id,
        request_id=turn.request_id,
        role=turn.role,
        text=turn.text,
        source=turn.source,
        persona=turn.persona,
        latency_s=float(turn.latency_s),
    )


def session_to_msg(info: SessionInfo) -> SessionInfoMsg:
    return SessionInfoMsg(
        session_id=info.session_id,
        persona=info.persona,
        created=stamp_from_wall(info.created),
        last_active=stamp_from_wall(info.last_active),
        turn_count=info.turn_count,
    )


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of memory_node (the profile test checks the YAML files against it)."""
    return [
        ParamSpec("database_path", "", "SQLite file (empty = $ROS_HOME/smolfusion_ros/memory.db)"),
        ParamSpec("max_turn_chars", 8000, "longest turn text accepted", between(1, 10_000_000)),
        ParamSpec(
            "default_history_turns",
            20,
            "turns returned when max_turns is 0",
            between(1, 100_000),
        ),
        ParamSpec(
            "synchronous",
            "FULL",
            "SQLite synchronous mode (FULL survives power loss, NORMAL only process crashes)",
            one_of("FULL", "NORMAL"),
        ),
        ParamSpec(
            "watch_period_s",
            0.2,
            "how often turns written by other processes (fusion_node) are announced "
            "on memory_events",
            between(0.01, 60.0),
            applies=STARTUP,  # the timer's period
        ),
        DIAGNOSTICS_PERIOD_SPEC,
        AUTOSTART_SPEC,
    ]


class MemoryNode(ManagedNode):
    """A managed node: the SQLite file is opened in configure() and closed in cleanup(); its
    services exist in every state and answer "node is inactive" unless the node is active."""

    def __init__(self, node_name: str = "memory_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._specs = parameter_specs()
        declare_parameter_specs(self, self._specs)
        initial = read_parameters(self, self._specs)
        self.store: MemoryStore | None = None
        self._default_turns = initial["default_history_turns"]
        self._errors = 0
        self._last_error = ""
        self._events = self.create_publisher(MemoryEvent, "memory_events", 50)
        # Every "appended" event comes from one place, in turn-id order, whoever wrote the turn.
        self._announced_up_to = 0
        self._announce_lock = threading.Lock()
        self.create_timer(
            initial["watch_period_s"], self._announce_new_turns, MutuallyExclusiveCallbackGroup()
        )
        self._diag = create_diagnostics(self, self._publish_diagnostics)
        group = ReentrantCallbackGroup()
        for srv_type, name, handler in (
            (AppendTurn, "~/append_turn", self._append),
            (GetHistory, "~/get_history", self._history),
            (ListSessions, "~/list_sessions", self._list),
            (ClearSession, "~/clear_session", self._clear),
            (ExportSession, "~/export_session", self._export),
            (SearchMemory, "~/search_memory", self._search),
        ):
            self.create_service(srv_type, name, self._guarded(handler), callback_group=group)

    def configure(self) -> None:
        p = read_parameters(self, self._specs)
        path = p["database_path"] or str(paths.default_memory_database())
        try:
            store = MemoryStore(
                path, max_turn_chars=p["max_turn_chars"], synchronous=p["synchronous"]
            )
        except MemoryStoreError as exc:
            raise ConfigError(str(exc)) from None
        self._default_turns = p["default_history_turns"]
        with self._announce_lock:
            # Turns already in the file are history, not news.
            self._announced_up_to = store.last_turn_id()
            self.store = store
        self.get_logger().info(f"memory database {store.path} ({store.turn_count()} turns stored)")

    def cleanup(self) -> None:
        with self._announce_lock:
            store, self.store = self.store, None
        if store is not None:
            store.close()

    def _guarded(self, handler: Callable) -> Callable:
        """Every bad request or storage failure becomes success=false with an error text."""

        def call(request, response):
            if not self.is_active or self.store is None:
                response.success, response.error = False, self.inactive_error()
                return response
            try:
                handler(request, response)
                response.success = True
            except (RequestRejected, MemoryStoreError) as exc:
                response.success, response.error = False, str(exc)
            except Exception as exc:  # never die on a request
                self.get_logger().error(f"memory request failed: {exc}")
                response.success, response.error = False, f"internal error: {exc}"
            if not response.success:
                self._errors += 1
                self._last_error = response.error
            return response

        return call

    def _append(self, request, response) -> None:
        turn = request.turn
        stamp = turn.stamp.sec + turn.stamp.nanosec * 1e-9 or None
        stored = self.store.append_turn(
            turn.session_id,
            turn.role,
            turn.text,
            source=turn.source,
            stamp=stamp,
            latency_s=turn.latency_s,
            persona=turn.persona,
            request_id=turn.request_id,
            append_id=request.append_id,
        )
        response.turn_id = stored.turn_id
        self._announce_new_turns()

    def _announce_new_turns(self) -> None:
        with self._announce_lock:
            if self.store is None or not self.is_active:
                return
            for turn in self.store.turns_after(self._announced_up_to):
                self._events.publish(
                    MemoryEvent(
                        stamp=self.get_clock().now().to_msg(),
                        event=MemoryEvent.EVENT_APPENDED,
                        session_id=turn.session_id,
                        turn_id=turn.turn_id,
                        role=turn.role,
                    )
                )
                self._announced_up_to = turn.turn_id

    def _history(self, request, response) -> None:
        turns = self.store.history(
            request.session_id,
            max_turns=request.max_turns or self._default_turns,
            token_budget=request.max_tokens,
        )
        response.turns = [turn_to_msg(t) for t in turns]
        response.summary = self.store.summary(request.session_id)[0]

    def _list(self, request, response) -> None:
        sessions = self.store.list_sessions(request.limit or 100, request.offset)
        response.sessions = [session_to_msg(s) for s in sessions]

    def _clear(self, request, response) -> None:
        response.turns_deleted = self.store.clear_session(request.session_id)
        self._events.publish(
            MemoryEvent(
                stamp=self.get_clock().now().to_msg(),
                event=MemoryEvent.EVENT_CLEARED,
                session_id=request.session_id,
            )
        )

    def _export(self, request, response) -> None:
        response.json = self.store.export_session(request.session_id)

    def _search(self, request, response) -> None:
        turns = self.store.search(
            request.query, session_id=request.session_id, limit=request.limit or 10
        )
        response.turns = [turn_to_msg(t) for t in turns]

    def _publish_diagnostics(self) -> None:
        with self._announce_lock:
            store = self.store
            if store is None:
                values = {"database": "", "errors": str(self._errors), "last_error": ""}
                level, message, path = DiagnosticStatus.WARN, "no database open", ""
                values["last_error"] = self.last_transition_error
            else:
                path = str(store.path)
                values = {
                    "database": path,
                    "turns": str(store.turn_count()),
                    "errors": str(self._errors),
                    "last_error": self._last_error,
                }
                level, message = DiagnosticStatus.OK, "ok"
        self._diag.publish(diagnostic_array(self, "memory", level, message, path, values))


def main() -> None:
    run_node(MemoryNode)


if __name__ == "__main__":
    main()
