"""The vision half of fusion_node: camera frames in; scene, debug image, greeting and the
`analyze` service out. The model work runs on the VisionWorker's thread (core.scene).

Subscribes:  vision.frame_topic (sensor_msgs/Image, SensorDataQoS; camera_node/frame)
Publishes:   scene (SceneContext), debug_image (sensor_msgs/Image rgb8, frame + scene text),
             response / response_stream (a greeting when a new person appears)
Services:    analyze (Analyze: image, or the newest frame when empty, + prompt -> answer)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from rclpy.callback_groups import CallbackGroup, MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from smolfusion_ros import catalogue
from smolfusion_ros.backends import registry
from smolfusion_ros.core.people import PersonTracker
from smolfusion_ros.core.routing import DEFAULT_VISUAL_PATTERNS, VisualTurnClassifier
from smolfusion_ros.core.scene import (
    CONCURRENCY_POLICIES,
    LatestFrame,
    Scene,
    VisionUnavailable,
    VisionWorker,
)
from smolfusion_ros.io import heap
from smolfusion_ros.io.image_convert import ImageConversionError, rgb_to_image_fields
from smolfusion_ros.io.overlay import draw_caption
from smolfusion_ros.msg import ResponseChunk, SceneContext, Turn
from smolfusion_ros.nodes.conversions import (
    image_msg_to_rgb,
    node_clock_seconds,
    stamp_from_seconds,
)
from smolfusion_ros.nodes.parameters import (
    LIVE,
    STARTUP,
    ConfigError,
    ParamSpec,
    at_least,
    between,
    one_of,
    watch_parameters,
)
from smolfusion_ros.srv import Analyze

# Visual questions (analyze calls) that may wait behind the running one; more get "busy". Each
# waiting analyze call holds an executor thread, so the node counts them (max_waiting_calls).
ANALYZE_MAX_PENDING = 4
# analyze's request queue: deeper than rclpy's 10, so a burst several times the vision queue
# is answered ("busy" for the overflow) rather than dropped, but not as deep as chat's: each
# request may carry an image of up to vision.max_pixels, and Fast DDS keeps received payloads
# for reuse per queue slot.
ANALYZE_QOS = QoSProfile(depth=16, reliability=ReliabilityPolicy.RELIABLE)


def vision_parameter_specs() -> list[ParamSpec]:
    return [
        ParamSpec(
            "vision.backend",
            "",
            "vision back end (perception, llama_cpp_vlm, "
            "transformers_vlm, openai_vlm); empty = no vision",
            one_of("", *registry.vision_backend_names()),
        ),
        ParamSpec("vision.model", "", "catalogue id of the VLM (empty for perception)"),
        ParamSpec(
            "vision.model_path",
            "",
            "VLM weights (GGUF file or transformers directory); overrides vision.model",
        ),
        ParamSpec("vision.mmproj_path", "", "llama.cpp projector (mmproj) GGUF for the VLM"),
        ParamSpec("vision.base_url", "", "OpenAI-compatible server for openai_vlm"),
        ParamSpec(
            "vision.n_threads",
            1,
            "CPU threads for the vision model (1 beside the LLM on 2 cores)",
            between(1, 256),
        ),
        ParamSpec("vision.n_gpu_layers", 0, "VLM layers on the GPU (-1 = all)", at_least(-1)),
        ParamSpec("vision.max_tokens", 96, "length limit of a vision answer", between(1, 4096)),
        ParamSpec(
            "vision.interval_s",
            2.0,
            "scene loop period (newest changed frame only)",
            at_least(0.05),
            applies=LIVE,
        ),
        ParamSpec(
            "vision.max_side", 512, "frames are downscaled to this longest side", between(32, 4096)
        ),
        ParamSpec(
            "vision.max_pixels",
            16_000_000,
            "largest image (width x height) accepted by analyze and from the camera; larger "
            "ones are refused before conversion (16 MP: 4K UHD is 8.3 MP)",
            between(4096, 1_000_000_000),
        ),
        ParamSpec(
            "vision.frame_topic",
            "camera_node/frame",
            "camera frames (relative name)",
            applies=STARTUP,  # the subscription is created once
        ),
        ParamSpec(
            "vision.scene_prompt",
            "",
            "prompt for scene descriptions (empty = the back end's default)",
        ),
        ParamSpec(
            "vision.max_scene_age_s", 30.0, "older scene descriptions are not used", at_least(0.1)
        ),
        ParamSpec(
            "vision.timeout_s", 30.0, "a visual question gives up after this long", at_least(0.1)
        ),
        ParamSpec(
            "vision.concurrency",
            "yield",
            "scene loop beside the LLM: yield (pause while an answer is generated; small CPUs) "
            "or concurrent (keep describing, each model with its own threads; GPU profiles)",
            one_of(*CONCURRENCY_POLICIES),
        ),
        ParamSpec(
            "vision.visual_patterns",
            list(DEFAULT_VISUAL_PATTERNS),
            "regular expressions that make a turn visual (use_vision=auto)",
        ),
        ParamSpec(
            "vision.greeting",
            "Hello! Nice to see you.",
            "said when a new person appears (empty = no greeting)",
        ),
        ParamSpec("vision.greeting_session", "default", "session the greeting belongs to"),
        ParamSpec(
            "vision.absence_s", 5.0, "a person away this long is greeted again", at_least(0.0)
        ),
    ]


class VisionBridge:
    """Owns the VisionWorker for a node and its topics and service.

    The topics and the analyze service exist for the node's whole life (created once, so an
    inactive node still answers analyze with "node is inactive"); the back end and its worker
    are built by configure() and released by close() (fusion_node's lifecycle).
    """

    def __init__(
        self,
        node: Node,
        frame_topic: str,
        waiting_group: CallbackGroup,
        is_active: Callable[[], bool],
        inactive_error: Callable[[], str],
    ) -> None:
        self._node = node
        self._is_active = is_active
        self._inactive_error = inactive_error
        # Frame stamps and scene freshness on the node clock: under use_sim_time (bag
        # replay) the camera's header stamps are sim time too.
        self._now = node_clock_seconds(node)
        self._p: dict = {}
        self.frames = LatestFrame()
        self.frames_bad = 0
        watch_parameters(node, self._apply_live)
        self.classifier: VisualTurnClassifier | None = None
        self.worker: VisionWorker | None = None
        self._started = False
        # analyze calls that can wait at once: the queued ones and the one being answered.
        self.max_waiting_calls = ANALYZE_MAX_PENDING + 1
        self._scene_pub = node.create_publisher(SceneContext, "scene", 10)
        self._debug_pub = node.create_publisher(Image, "debug_image", qos_profile_sensor_data)
        self._greeting_turns = node.create_publisher(Turn, "response", 10)
        self._greeting_chunks = node.create_publisher(ResponseChunk, "response_stream", 100)
        node.create_subscription(
            Image,
            frame_topic,
            self._on_frame,
            qos_profile_sensor_data,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        node.create_service(
            Analyze,
            "analyze",
            self._on_analyze,
            qos_profile=ANALYZE_QOS,
            callback_group=waiting_group,
        )

    @property
    def configured(self) -> bool:
        return self.worker is not None

    def configure(self, p: dict, llm_busy: Callable[[], bool]) -> None:
        """Build the back end and its worker (not started); ConfigError on a bad parameter."""
        self._p = p
        try:
            self.classifier = VisualTurnClassifier(p["vision.visual_patterns"])
        except ValueError as exc:
            raise ConfigError(f"vision.visual_patterns: {exc}") from None
        self.frames = LatestFrame()  # no frame of a previous configuration is described
        backend = self._create_backend(p)
        self.worker = VisionWorker(
            backend,
            self.frames,
            interval_s=p["vision.interval_s"],
            scene_prompt=p["vision.scene_prompt"],
            max_tokens=p["vision.max_tokens"],
            max_scene_age_s=p["vision.max_scene_age_s"],
            llm_busy=llm_busy,
            on_scene=self._publish_scene,
            person_tracker=PersonTracker(p["vision.absence_s"]),
            max_pending_questions=ANALYZE_MAX_PENDING,
            concurrency=p["vision.concurrency"],
            now=self._now,
        )

    def start(self) -> None:
        """Start the worker's thread (it loads the vision model first)."""
        if self.worker is not None:
            self.worker.start()
            self._started = True

    def _apply_live(self, changes: dict) -> None:
        """`ros2 param set vision.interval_s`: the scene loop takes it at once; without a
        worker (unconfigured, no vision) the next configure reads it."""
        if "vision.interval_s" in changes:
            interval = changes["vision.interval_s"]
            if self._p:
                self._p = {**self._p, "vision.interval_s": interval}
            worker = self.worker
            if worker is not None:
                worker.set_interval(interval)

    @staticmethod
    def _create_backend(p: dict):
        name = p["vision.backend"]  # a registry name: its spec checked it
        options = {
            "n_threads": p["vision.n_threads"],
            "n_gpu_layers": p["vision.n_gpu_layers"],
            "base_url": p["vision.base_url"],
            "model_name": p["vision.model"] if name == "openai_vlm" else "",
        }
        if name not in ("perception", "openai_vlm"):
            try:
                model_path, mmproj = catalogue.resolve_vision_model(
                    p["vision.model"], p["vision.model_path"], p["vision.mmproj_path"]
                )
            except catalogue.ModelNotFoundError as exc:
                raise ConfigError(str(exc)) from None
            options |= {"model_path": model_path, "mmproj_path": mmproj or ""}
        try:
            return registry.create_vision_backend(name, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"vision back end {name}: {exc}") from None

    # ------------------------------------------------------------------- input
    def _convert(self, image: Image) -> np.ndarray:
        return image_msg_to_rgb(
            image,
            self._p["vision.max_side"],
            max_pixels=self._p["vision.max_pixels"],
            limit_name="vision.max_pixels",
        )

    @staticmethod
    def _release(image: Image) -> None:
        """Drop a large image's bytes now and give the freed memory back (io.heap)."""
        nbytes = len(image.data)
        if nbytes >= heap.LARGE_MESSAGE_BYTES:
            image.data = b""
            heap.after_message(nbytes)

    def _on_frame(self, msg: Image) -> None:
        # Inactive (a behaviour tree switched vision off) or not configured: frames are
        # dropped here, so the scene loop has nothing new to describe and stays idle.
        if self.worker is None or not self._is_active():
            self._release(msg)
            return
        try:
            rgb = self._convert(msg)
        except ImageConversionError as exc:
            self.frames_bad += 1
            self._node.get_logger().warning(
                f"camera frame dropped: {exc}", throttle_duration_sec=5.0
            )
            return
        finally:
            self._release(msg)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 or self._now()
        self.frames.put(rgb, stamp)

    def _on_analyze(self, request: Analyze.Request, response: Analyze.Response):
        image = None
        worker = self.worker
        if worker is None or not self._is_active():
            self._release(request.image)
            response.success = False
            response.error = (
                self._inactive_error()
                if not self._is_active()
                else "vision is not configured (vision.backend is empty)"
            )
            return response
        try:
            if request.image.height or request.image.width or len(request.image.data):
                try:
                    image = self._convert(request.image)
                finally:
                    self._release(request.image)
            # Bounded wait: after vision.timeout_s the question is withdrawn (never computed
            # later) and the executor thread is free again.
            result, _stamp = worker.ask(
                request.prompt.strip(), image, timeout=self._p["vision.timeout_s"]
            )
        except (ImageConversionError, VisionUnavailable) as exc:
            response.success, response.error = False, str(exc)
            return response
        except Exception as exc:  # never die on a request
            response.success, response.error = False, f"internal error: {exc}"
            return response
        response.success = True
        response.answer = result.text
        response.model = f"{result.kind}:{result.model}"
        response.latency_s = float(result.latency_s)
        return response

    # -------------------------------------------------------------- publishing
    def _publish_scene(self, scene: Scene) -> None:
        result = scene.result
        self._scene_pub.publish(
            SceneContext(
                frame_stamp=stamp_from_seconds(scene.frame.stamp),
                description=result.text,
                model=result.model,
                kind=result.kind,
                latency_s=float(result.latency_s),
                has_person=scene.person.has_person,
                person_count=scene.person.person_count,
                smiling=result.smiling,
                new_person=scene.person.new_person,
            )
        )
        if self._debug_pub.get_subscription_count():
            height, width, encoding, step, data = rgb_to_image_fields(
                draw_caption(scene.frame.image, result.text)
            )
            debug = Image(height=height, width=width, encoding=encoding, step=step, data=data)
            debug.header.stamp = stamp_from_seconds(scene.frame.stamp)
            debug.header.frame_id = "camera"
            self._debug_pub.publish(debug)
        if scene.person.new_person and self._p["vision.greeting"]:
            self._greet()

    def _greet(self) -> None:
        text, session = self._p["vision.greeting"], self._p["vision.greeting_session"]
        request_id = f"greeting-{time.time_ns()}"
        now = self._node.get_clock().now().to_msg()
        for seq, (chunk, final) in enumerate(((text, False), ("", True))):
            self._greeting_chunks.publish(
                ResponseChunk(
                    stamp=now,
                    session_id=session,
                    request_id=request_id,
                    seq=seq,
                    text=chunk,
                    is_final=final,
                    source="greeting",
                )
            )
        self._greeting_turns.publish(
            Turn(
                stamp=now,
                session_id=session,
                request_id=request_id,
                role=Turn.ROLE_ASSISTANT,
                text=text,
                source="greeting",
            )
        )

    def diagnostics(self) -> dict[str, object]:
        worker = self.worker
        if worker is None:
            return {"vision_backend": self._p.get("vision.backend", ""), "vision_state": "off"}
        stats = worker.stats
        return {
            "vision_backend": self._p["vision.backend"],
            "vision_state": "failed"
            if worker.load_error
            else ("ready" if worker.ready else "loading"),
            "vision_error": worker.load_error,
            "scenes": stats.scenes,
            "visual_questions": stats.questions,
            # analyze calls and visual turns refused because the vision queue was full.
            "visual_questions_rejected": worker.question_counts.rejected,
            "scene_preempted": stats.preempted,
            "vision_failures": stats.failures,
            "frames_dropped_stale": self.frames.dropped,
            "frames_dropped_bad": self.frames_bad,
            "last_vision_latency_s": f"{stats.last_latency_s:.3f}",
        }

    def close(self, reason: str = "the node is shutting down") -> None:
        """Stop the worker (queued questions fail with `reason`, the back end is released);
        idempotent."""
        worker, self.worker = self.worker, None
        started, self._started = self._started, False
        if worker is None:
            return
        if started:
            worker.stop(reason=reason)
        else:  # configure failed after building it: nothing runs, only the back end to free
            worker.backend.close()
