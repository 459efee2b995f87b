"""Managed (lifecycle) nodes: the base every node that loads a model or opens a device uses.

The shape follows ros2/demos' lifecycle talker and nav2's servers: models, engines, files and
devices are created in on_configure, work starts in on_activate, stops in on_deactivate and
everything is released in on_cleanup / on_shutdown. A subclass writes four plain methods
(configure, activate, deactivate, cleanup) and this base turns them into rclpy transition
callbacks:

- configure() may raise ConfigError (a bad parameter, a missing model): the transition fails
  with that one line logged, the node stays unconfigured and can be configured again after a
  parameter is fixed (`ros2 param set`, then `ros2 lifecycle set <node> configure`). Any other
  exception is logged with its traceback; either way what configure() built is cleaned up.
- Services, actions, publishers and subscriptions are created once in __init__, not per
  configure: an inactive or unconfigured node then still answers every request with
  success=false, "node is inactive" (a behaviour tree that deactivated listening gets a clear
  answer, not a call that waits for a server that went away), and no entity is destroyed while
  the executor spins (rclpy's action server has raced there). Callbacks check `is_active`
  (or wrap a service handler in `when_active`) and drop topic input while inactive.
- `autostart` (read-only parameter; true by default and in every profile's YAML, so
  `ros2 run` and `ros2 launch` work as before): the runner configures and activates the node
  before it starts spinning, as nav2's lifecycle manager does; this also works on Humble, where
  launch_ros' LifecycleNode has no autostart. A lifecycle manager or behaviour tree that drives
  the transitions itself starts the node with autostart:=false.
  A configure that fails at autostart stops the process with exit code 2 and one line, as a
  bad parameter did before nodes were managed.
- /diagnostics built with nodes.diagnostics.diagnostic_array carries the lifecycle state
  ("lifecycle" value, and the message says when the node is not active) with no extra code.
- The runner's orderly SIGINT/SIGTERM shutdown is unchanged: begin_shutdown()/drained() answer
  what is in progress, then close() runs the shutdown transition (deactivate + cleanup).

Transition callbacks run on an executor thread (the ~/change_state service): they must not
wait for long. Model loading that takes seconds starts in configure() on a thread of its own
and is reported as loading until it ends (fusion_node's engine does this).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn

from smolfusion_ros.entry import import_failure
from smolfusion_ros.nodes.parameters import STARTUP, ConfigError, ParamSpec, descriptor_for

UNCONFIGURED = "unconfigured"
INACTIVE = "inactive"
ACTIVE = "active"
FINALIZED = "finalized"

INACTIVE_ERROR = "node is inactive"

AUTOSTART_DESCRIPTION = (
    "configure and activate at start-up (false leaves the node unconfigured for a lifecycle "
    "manager or behaviour tree)"
)
# For a node's spec table (the profile test checks every YAML key against it); the base
# declares it (read-only) before the node's own specs, and declare_parameter_specs skips it.
AUTOSTART_SPEC = ParamSpec("autostart", True, AUTOSTART_DESCRIPTION, applies=STARTUP)


class ManagedNode(LifecycleNode):
    """Base of the managed nodes. Subclasses override configure/activate/deactivate/cleanup."""

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.autostart: bool = self.declare_parameter(
            AUTOSTART_SPEC.name,
            AUTOSTART_SPEC.default,
            descriptor_for(AUTOSTART_SPEC, managed=True),
        ).value
        self._state = UNCONFIGURED
        self._active = threading.Event()
        self._transition_lock = threading.RLock()
        # The reason of the last failed transition (one line), for the runner and diagnostics.
        self.last_transition_error = ""
        self._bringing_up = False

    # ------------------------------------------------------------ subclass hooks
    def configure(self) -> None:
        """Read parameters, create models/engines/files. Raise ConfigError on a bad one."""

    def activate(self) -> None:
        """Start work: loops, capture, taking requests. is_active is already true."""

    def deactivate(self) -> None:
        """Stop work. is_active is already false, so new requests are refused."""

    def cleanup(self) -> None:
        """Release what configure() created. Must tolerate a partial configure()."""

    def after_transition(self) -> None:
        """Called after every transition, with lifecycle_state already the new state (e.g. to
        publish /diagnostics at once instead of at the next tick). Must not raise."""

    # ------------------------------------------------------------------- state
    @property
    def lifecycle_state(self) -> str:
        """unconfigured, inactive, active or finalized."""
        return self._state

    @property
    def is_active(self) -> bool:
        return self._active.is_set()

    def inactive_error(self) -> str:
        return f"{INACTIVE_ERROR} (lifecycle state: {self._state})"

    def when_active(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """Wrap a service handler: while not active it answers success=false, 'node is
        inactive', without calling the handler (its response type needs success and error)."""

        def call(request, response):
            if not self.is_active:
                response.success, response.error = False, self.inactive_error()
                return response
            return handler(request, response)

        return call

    # ------------------------------------------------- rclpy transition callbacks
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        with self._transition_lock:
            if not self._run("configure", self.configure):
                reason = self.last_transition_error
                self._run("cleanup after a failed configure", self.cleanup)
                self.last_transition_error = reason
                return TransitionCallbackReturn.FAILURE
            self._state = INACTIVE
            self._after()
            return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._active.set()
            if not self._run("activate", self.activate):
                self._active.clear()
                return TransitionCallbackReturn.FAILURE
            self._state = ACTIVE
            self._after()
            return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._active.clear()
            self._state = INACTIVE
            ok = self._run("deactivate", self.deactivate)
            self._after()
            result = super().on_deactivate(state)
            return result if ok else TransitionCallbackReturn.FAILURE

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        with self._transition_lock:
            ok = self._run("cleanup", self.cleanup)
            self._state = UNCONFIGURED
            self._after()
            result = super().on_cleanup(state)
            return result if ok else TransitionCallbackReturn.FAILURE

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._release()
            self._state = FINALIZED
            return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        # A transition raised: release everything and go back to unconfigured, from where the
        # node can be configured again.
        with self._transition_lock:
            self._release()
            self._state = UNCONFIGURED
            return TransitionCallbackReturn.SUCCESS

    def _after(self) -> None:
        try:
            self.after_transition()
        except Exception as exc:  # reporting must never fail a transition
            self.get_logger().warning(f"after_transition: {exc}")

    def _release(self) -> None:
        if self._state == ACTIVE:
            self._active.clear()
            self._run("deactivate", self.deactivate)
            self._state = INACTIVE
        if self._state == INACTIVE:
            self._run("cleanup", self.cleanup)
            self._state = UNCONFIGURED

    def _run(self, what: str, hook: Callable[[], None]) -> bool:
        """Run a hook; log a failure as one line (ConfigError) or with its traceback."""
        try:
            hook()
        except ConfigError as exc:
            self.last_transition_error = str(exc)
            if not self._bringing_up:  # at autostart the runner prints the one line
                self.get_logger().error(f"{what} failed: {exc}")
            return False
        except ImportError as exc:  # a package a back end needs: one line saying what to install
            self.last_transition_error = import_failure(exc)
            if not self._bringing_up:
                self.get_logger().error(f"{what} failed: {self.last_transition_error}")
            return False
        except Exception as exc:  # rclpy would turn it into a silent ERROR transition
            self.last_transition_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"{what} failed: {exc}\n{traceback.format_exc()}")
            return False
        self.last_transition_error = ""
        return True

    # ------------------------------------------------------------- bring-up
    def bring_up(self) -> str | None:
        """Configure and activate (autostart). Returns None, or the reason it failed."""
        success = TransitionCallbackReturn.SUCCESS
        self._bringing_up = True
        try:
            if self._state == UNCONFIGURED and self.trigger_configure() != success:
                return self.last_transition_error or "configure failed"
            if self._state == INACTIVE and self.trigger_activate() != success:
                return self.last_transition_error or "activate failed"
            return None
        finally:
            self._bringing_up = False

    def close(self) -> None:
        """Process end (runner.shutdown): the shutdown transition, once."""
        if self._state == FINALIZED:
            return
        try:
            self.trigger_shutdown()
        except Exception:  # the state machine refused (e.g. mid-transition): release anyway
            with self._transition_lock:
                self._release()
                self._state = FINALIZED


def autostart(nodes: list) -> str | None:
    """Bring every managed node with autostart=true to active, in order.

    Returns None, or "<node>: <reason>" for the first that failed.
    """
    for node in nodes:
        if isinstance(node, ManagedNode) and node.autostart:
            problem = node.bring_up()
            if problem is not None:
                return problem
    return None
