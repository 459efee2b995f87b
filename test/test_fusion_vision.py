"""The whole vision path across processes: camera_node -> fusion_node (perception + SmolLM2).

Real photos (scikit-image's coffee, then astronaut) arrive on camera_node's image_raw as from
a camera driver; fusion_node describes them in its scene loop, greets the person who appears
and answers visual questions with them. (Capture from an image folder or a video file is
tested in test_camera_node.py.)
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import make_client, unique_namespace, wait_for
from images import photo
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from smolfusion_ros.msg import SceneContext, Turn
from smolfusion_ros.nodes.conversions import stamp_from_wall
from smolfusion_ros.srv import Analyze

pytestmark = [pytest.mark.ros, pytest.mark.model]
FUSION = "smolfusion_ros.nodes.fusion_node"
CAMERA = "smolfusion_ros.nodes.camera_node"


def _image_msg(rgb: np.ndarray) -> Image:
    height, width = rgb.shape[:2]
    return Image(height=height, width=width, encoding="rgb8", step=width * 3, data=rgb.tobytes())


class FramePublisher:
    """Feeds camera_node's image_raw like a camera driver: 5 Hz, the scene set by the test."""

    def __init__(self, node, topic: str, image: np.ndarray) -> None:
        self._publisher = node.create_publisher(Image, topic, qos_profile_sensor_data)
        self.image = image
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = _image_msg(self.image)
            msg.header.stamp = stamp_from_wall()
            self._publisher.publish(msg)
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def vision_graph(ros_node, start_node):
    namespace = unique_namespace("vision")
    start_node(CAMERA, namespace, params={"rate_hz": 5.0})
    fusion = start_node(
        FUSION, namespace, params={"llm.temperature": 0.0, "vision.interval_s": 0.3}
    )
    scenes, turns, debug = [], [], []
    ros_node.create_subscription(SceneContext, f"{namespace}/scene", scenes.append, 10)
    ros_node.create_subscription(Turn, f"{namespace}/response", turns.append, 10)
    ros_node.create_subscription(
        Image, f"{namespace}/debug_image", debug.append, qos_profile_sensor_data
    )
    # An empty room first: the person walks in once the test is listening.
    camera = FramePublisher(ros_node, f"{namespace}/image_raw", photo("coffee.png"))
    client = make_client(ros_node, namespace)
    client.wait_until_ready(60)
    analyze = ros_node.create_client(Analyze, f"{namespace}/analyze")
    assert analyze.wait_for_service(timeout_sec=20)
    # The vision model loads beside the LLM; the first scene shows it is up and frames flow.
    assert wait_for(lambda: len(scenes) > 0, 30), fusion.log[-2000:]
    assert not scenes[-1].has_person
    camera.image = photo("astronaut.png")
    yield namespace, fusion, client, analyze, scenes, turns, debug
    camera.stop()


def _call(client, request, timeout: float = 30):
    from smolfusion_ros.client import _wait_future

    return _wait_future(client.call_async(request), timeout, "analyze")


def test_scene_greeting_and_debug_image_from_a_real_photo(vision_graph):
    _ns, fusion, _client, _analyze, scenes, turns, debug = vision_graph
    assert wait_for(lambda: any(s.has_person for s in scenes), 30), fusion.log[-2000:]
    scene = next(s for s in scenes if s.has_person)
    assert scene.kind == "perception" and scene.person_count >= 1
    assert scene.description.startswith("Perception summary")
    assert scene.frame_stamp.sec > 0 and scene.latency_s > 0
    assert any(s.new_person for s in scenes)
    assert wait_for(lambda: any(t.source == "greeting" for t in turns), 10)
    assert wait_for(lambda: len(debug) > 0, 10)
    frame = debug[-1]
    assert frame.encoding == "rgb8" and max(frame.width, frame.height) <= 512
    pixels = np.frombuffer(bytes(frame.data), np.uint8).reshape(frame.height, frame.width, 3)
    assert pixels[-10:].mean() < pixels[: frame.height // 2].mean(), "caption band drawn"


def test_visual_questions_use_the_camera_and_others_the_scene(vision_graph):
    _ns, _fusion, client, _analyze, scenes, _turns, _debug = vision_graph
    assert wait_for(lambda: any(s.has_person for s in scenes), 30)
    visual = client.chat("What do you see?", session_id="eyes", max_tokens=24)
    assert visual.success and visual.scene_used, visual.error
    plain = client.chat(
        "What is two plus two?", session_id="math", max_tokens=8, use_vision="never"
    )
    assert plain.success and not plain.scene_used


def test_analyze_an_image_the_latest_frame_and_bad_images(vision_graph):
    _ns, fusion, _client, analyze, scenes, _turns, _debug = vision_graph
    coffee = _call(
        analyze,
        Analyze.Request(image=_image_msg(photo("coffee.png")), prompt="How many people are there?"),
    )
    assert coffee.success, coffee.error
    assert "no person seen" in coffee.answer
    assert coffee.model.startswith("perception")
    assert wait_for(lambda: any(s.has_person for s in scenes), 30)
    latest = _call(analyze, Analyze.Request(prompt=""))
    assert latest.success and "1 person" in latest.answer
    broken = _image_msg(photo("coffee.png"))
    broken.step = 7
    bad = _call(analyze, Analyze.Request(image=broken, prompt="What is this?"))
    assert not bad.success and bad.error
    unknown = _image_msg(photo("coffee.png"))
    unknown.encoding = "32FC7"
    bad = _call(analyze, Analyze.Request(image=unknown, prompt="What is this?"))
    assert not bad.success and "32FC7" in bad.error
    assert fusion.alive()
