"""Speculative utterances reach fusion_node but are never answered, spoken or stored.

fusion_node (cpu_demo, SmolLM2) as a process: a speculative utterance (the person paused) only
has its prompt evaluated ahead (ChatEngine.prefill): no token on response_stream, no Turn on
response, nothing in the session's history. The final utterance with the same words is then
answered once. Then the whole chain with real speech: microphone_node plays a WAV with a
pause in the middle of a question into speech_node; nothing is answered before the person
has finished, and the question is answered once.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest
from conftest import make_client, unique_namespace, wait_for
from diagnostic_msgs.msg import DiagnosticArray
from speech_samples import read_wav, synthesize_wav, write_wav

from smolfusion_ros.io.audio import trim_silence
from smolfusion_ros.msg import AudioChunk, ResponseChunk, Turn, Utterance
from smolfusion_ros.nodes.conversions import stamp_from_wall
from smolfusion_ros.nodes.speech_node import AUDIO_QOS

pytestmark = [pytest.mark.ros, pytest.mark.model]
FUSION = "smolfusion_ros.nodes.fusion_node"
FUSION_PARAMS = {"llm.temperature": 0.0, "chat.default_max_tokens": 16}


def utterance(text: str, session: str, *, final: bool, speculative: bool) -> Utterance:
    return Utterance(
        stamp=stamp_from_wall(),
        session_id=session,
        text=text,
        is_final=final,
        speculative=speculative,
        confidence=0.9,
        locale="en",
        source=Utterance.SOURCE_SPEECH,
        persona="",
    )


def stored_user_turns(database, session: str) -> list[str]:
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT text FROM turns WHERE session_id = ? AND role = 'user'", (session,)
        )
        return [text for (text,) in rows]


def test_fusion_node_prefills_but_never_answers_a_speculative_utterance(
    ros_node, start_node, tmp_path
):
    namespace = unique_namespace("spec_fusion")
    database = tmp_path / "memory.db"
    chunks, turns = [], []
    # Only this session: the readiness probe (session smolfusion-probe) is answered too.
    ros_node.create_subscription(
        ResponseChunk,
        f"{namespace}/response_stream",
        lambda m: m.session_id == "spec" and chunks.append(m),
        100,
    )
    ros_node.create_subscription(
        Turn, f"{namespace}/response", lambda m: m.session_id == "spec" and turns.append(m), 10
    )
    pub = ros_node.create_publisher(Utterance, f"{namespace}/utterance", 10)
    process = start_node(
        FUSION, namespace, params={**FUSION_PARAMS, "memory.database_path": str(database)}
    )
    client = make_client(ros_node, namespace)
    client.wait_until_ready(60)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    question = "What is the capital of France?"
    for _ in range(3):  # the person pauses three times before finishing
        pub.publish(utterance(question, "spec", final=False, speculative=True))
        time.sleep(0.3)
    time.sleep(3.0)
    assert chunks == [] and turns == [], "a speculative utterance was answered"
    assert stored_user_turns(database, "spec") == [], "a speculative utterance was stored"
    assert process.alive(), process.log

    pub.publish(utterance(question, "spec", final=True, speculative=False))
    assert wait_for(lambda: any(t.session_id == "spec" for t in turns), 60), process.log
    time.sleep(1.0)
    answered = [t for t in turns if t.session_id == "spec"]
    assert len(answered) == 1 and answered[0].text.strip(), answered
    assert len({c.request_id for c in chunks}) == 1
    assert wait_for(lambda: stored_user_turns(database, "spec") == [question], 10), (
        stored_user_turns(database, "spec")
    )
    assert process.alive()


def test_a_question_with_a_pause_is_answered_once_after_the_person_finishes(
    ros_node, start_node, tmp_path
):
    namespace = unique_namespace("spec_voice")
    parts = []
    for i, text in enumerate(("Could you bring me", "the red cup from the table?")):
        frames, rate = read_wav(synthesize_wav(text, tmp_path / f"{i}.wav", sample_rate=16000))
        parts.append(trim_silence(frames[:, 0].copy(), rate))
    # 1.5 s of silence first: the microphone starts once any reader (this test's) matched, and
    # speech_node's reader may match a little later on a busy machine.
    lead, pause, tail = (np.zeros(int(s * 16000), np.int16) for s in (1.5, 0.5, 2.5))
    audio = np.concatenate([lead, parts[0], pause, parts[1], tail])
    wav = write_wav(tmp_path / "paused.wav", audio, 16000)
    end_of_speech_s = (len(lead) + len(parts[0]) + len(pause) + len(parts[1])) / 16000

    utterances, chunks, audio_starts = [], [], []
    ros_node.create_subscription(
        Utterance, f"{namespace}/utterance", lambda m: utterances.append((time.time(), m)), 50
    )
    ros_node.create_subscription(
        ResponseChunk,
        f"{namespace}/response_stream",
        lambda m: m.session_id == "v" and chunks.append((time.time(), m)),
        100,
    )

    def on_audio(msg) -> None:
        if not audio_starts:  # the wall time of the WAV's first sample (100 ms chunks)
            audio_starts.append(msg.stamp.sec + msg.stamp.nanosec * 1e-9 - msg.seq * 0.1)

    ros_node.create_subscription(AudioChunk, f"{namespace}/audio", on_audio, AUDIO_QOS)
    speech_diag: dict[str, str] = {}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name.startswith(f"{namespace}/speech_node"):
                speech_diag.update({kv.key: kv.value for kv in status.values})

    ros_node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    start_node(FUSION, namespace, params=FUSION_PARAMS)
    speech = start_node("smolfusion_ros.nodes.speech_node", namespace, params={"session_id": "v"})
    client = make_client(ros_node, namespace)
    client.wait_until_ready(60)
    mic = start_node(
        "smolfusion_ros.nodes.microphone_node",
        namespace,
        params={"wav_file": str(wav), "wait_for_subscriber_s": 10.0},
    )
    assert wait_for(lambda: any(m.is_final for _, m in utterances), 30), speech.log
    assert wait_for(lambda: chunks, 30), speech.log
    time.sleep(2.0)
    finals = [(t, m) for t, m in utterances if m.is_final]
    assert len(finals) == 1, [(m.text, m.is_final, m.speculative) for _, m in utterances]
    text = finals[0][1].text.lower()
    assert "bring me" in text and "red cup" in text, speech.log
    # Nothing final and no answer before the person finished (wall clock: the WAV's first
    # sample was heard at audio_starts[0]).
    assert len(audio_starts) == 1, mic.log
    end_of_speech = audio_starts[0] + end_of_speech_s
    first_token_at = min(t for t, _ in chunks)
    assert finals[0][0] > end_of_speech and first_token_at > end_of_speech
    assert len({m.request_id for _, m in chunks}) == 1, "answered more than once"
    # The pause after "Could you bring me" was speculated on, then discarded.
    assert wait_for(lambda: int(speech_diag.get("utterances", 0)) == 1, 5), speech_diag
    assert int(speech_diag["false_starts"]) >= 1, speech_diag
    print(
        f"final {finals[0][1].text!r} {finals[0][0] - end_of_speech:.2f} s and first token "
        f"{first_token_at - end_of_speech:.2f} s after the end of speech; speculative "
        f"{[m.text for _, m in utterances if m.speculative]}"
    )
