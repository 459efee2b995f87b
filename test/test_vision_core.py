"""ROS-free vision plumbing: routing of visual turns, person tracking, newest-frame holder."""

from __future__ import annotations

import numpy as np
import pytest

from smolfusion_ros.core.people import PersonTracker
from smolfusion_ros.core.routing import VisualTurnClassifier
from smolfusion_ros.core.scene import LatestFrame

CLASSIFIER = VisualTurnClassifier()


@pytest.mark.parametrize(
    "text",
    [
        "What do you see?",
        "what can you see right now",
        "What am I holding?",
        "How do I look today?",
        "Look at this!",
        "What’s in front of you?",
        "Can you read the sign?",
        "How many people are here?",
        "Am I smiling?",
        "Describe your surroundings.",
        "What color is my shirt?",
    ],
)
def test_visual_questions_are_routed_to_the_camera(text):
    assert CLASSIFIER.route(text).visual


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "See you later!",
        "I will look into it tomorrow.",
        "Tell me a story about a seal.",
        "What do you think about holding hands?",
        "How many days are in a week?",
        "Describe your favourite food.",
    ],
)
def test_ordinary_questions_are_not_hijacked(text):
    assert not CLASSIFIER.route(text).visual, CLASSIFIER.route(text).reason


def test_use_vision_overrides_the_patterns():
    assert CLASSIFIER.route("What is 2 + 2?", "always").visual
    assert not CLASSIFIER.route("What do you see?", "never").visual


def test_patterns_are_configurable_and_checked():
    custom = VisualTurnClassifier([r"\bscan\b"])
    assert custom.route("Please scan the shelf").visual
    assert not custom.route("What do you see?").visual
    with pytest.raises(ValueError, match="invalid visual pattern"):
        VisualTurnClassifier(["(unclosed"])


def test_a_person_is_new_once_until_they_have_been_away():
    tracker = PersonTracker(absence_s=5.0)
    assert not tracker.update(False, 0, 0.0).new_person
    assert tracker.update(True, 1, 1.0).new_person
    assert not tracker.update(True, 1, 2.0).new_person
    assert not tracker.update(False, 0, 3.0).new_person  # looked away briefly
    assert not tracker.update(True, 1, 4.0).new_person
    assert tracker.update(True, 2, 5.0).new_person  # a second person joined
    assert not tracker.update(False, 0, 20.0).new_person  # gone for long
    assert tracker.update(True, 1, 21.0).new_person


def test_only_the_newest_frame_is_kept_and_replaced_frames_are_counted():
    frames = LatestFrame()
    image = np.zeros((4, 4, 3), np.uint8)
    assert frames.latest() is None
    first = frames.put(image, 1.0)
    frames.mark_used(first)
    frames.put(image, 2.0)
    third = frames.put(image, 3.0)
    assert frames.dropped == 1, "frame 2 was never used"
    assert frames.latest().seq == third and frames.latest().stamp == 3.0
    assert frames.newer_than(third) is None
    assert frames.newer_than(first).seq == third
