"""The whole vision path across processes: camera_node -> fusion_node (perception + SmolLM2).

Real photos (scikit-image's astronaut and coffee) are captured by camera_node from an image
folder, exactly as on a robot without a camera driver; fusion_node describes them in its
scene loop and answers visual questions with them.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import make_client, unique_namespace, wait_for
from images import photo
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from smolfusion_ros.msg import SceneContext, Turn
from smolfusion_ros.srv import Analyze

pytestmark = [pytest.mark.ros, pytest.mark.model]
FUSION = "smolfusion_ros.nodes.fusion_node"
CAMERA = "smolfusion_ros.nodes.camera_node"


def _image_msg(rgb: np.ndarray) -> Image:
    height, width = rgb.shape[:2]
    return Image(height=height, width=width, encoding="rgb8", step=width * 3, data=rgb.tobytes())


@pytest.fixture
def vision_graph(ros_node, start_node, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(
        str(folder / "astronaut.png"), cv2.cvtColor(photo("astronaut.png"), cv2.COLOR_RGB2BGR)
    )
    namespace = unique_namespace("vision")
    start_node(CAMERA, namespace, params={"source": str(folder), "rate_hz": 5.0})
    fusion = start_node(
        FUSION, namespace, params={"llm.temperature": 0.0, "vision.interval_s": 0.3}
    )
    scenes, turns, debug = [], [], []
    ros_node.create_subscription(SceneContext, f"{namespace}/scene", scenes.append, 10)
    ros_node.create_subscription(Turn, f"{namespace}/response", turns.append, 10)

    ros_node.create_subscription(
        Image, f"{namespace}/debug_image", debug.append, qos_profile_sensor_data
    )
    client = make_client(ros_node, namespace)
    client.wait_until_ready(60)
    analyze = ros_node.create_client(Analyze, f"{namespace}/analyze")
    assert analyze.wait_for_service(timeout_sec=20)
    # The vision model loads beside the LLM; the first scene shows it is up and frames flow.
    assert wait_for(lambda: len(scenes) > 0, 30), fusion.log[-2000:]
    return namespace, fusion, client, analyze, scenes, turns, debug


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
    assert wait_for(lambda: len(scenes) > 0, 30)
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
    assert wait_for(lambda: len(scenes) > 0, 30)
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
