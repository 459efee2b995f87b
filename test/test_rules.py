"""Rule answers from the shipped config/rules.yaml: they fire on their intents, in any
phrasing the file lists, and never on ordinary sentences that merely share a keyword."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from smolfusion_ros.dialogue.rules import RuleError, load_rules, parse_rules

RULES = Path(__file__).resolve().parent.parent / "config" / "rules.yaml"


@pytest.fixture(scope="module")
def book():
    return load_rules(RULES)


POSITIVE = [
    ("What's your name?", "robot_name"),
    ("what is your name", "robot_name"),
    ("Hey Smol, who are you?", "robot_name"),
    ("Excuse me, what should I call you?", "robot_name"),
    ("Do you have a name?", "robot_name"),
    ("Tell me your name, please.", "robot_name"),
    ("Who am I talking to?", "robot_name"),
    ("What can you do?", "capabilities"),
    ("So what are your skills?", "capabilities"),
    ("How can you help me?", "capabilities"),
    ("How do I stop you?", "how_to_stop"),
    ("How can I turn you off?", "how_to_stop"),
    ("Where is the emergency stop button?", "how_to_stop"),
    ("Is there an emergency stop?", "how_to_stop"),
    ("How do I shut the robot down?", "how_to_stop"),
    ("What are your specs?", "specifications"),
    ("Which language model do you use?", "specifications"),
    ("Tell me about your hardware.", "specifications"),
    ("Who built you?", "maker"),
    ("Who's your creator?", "maker"),
    ("What languages do you speak?", "languages"),
    ("Hello! What’s your name?", "robot_name"),  # typographic apostrophe
    ("  WHAT CAN YOU DO  ", "capabilities"),
    ("okay robot, what is your name, thanks", "robot_name"),
]

NEGATIVE = [
    "My name is Ana.",
    "What is the name of that river?",
    "Stop the music and tell me a story.",
    "How do I stop the music?",
    "How do I stop worrying about exams?",
    "Who are you going to vote for?",
    "What can you do about the noise outside?",
    "Who made this cake?",
    "Who made you angry?",
    "Tell me your favourite name for a dog.",
    "What's your name for this song?",
    "Can you stop for a moment?",
    "stop",
    "Where is the stop for bus 12?",
    "What model of car is that?",
    "What languages do people speak in Switzerland?",
    "Your name is funny.",
    "I want to know what you see.",
    "Name three rivers in Europe.",
    "How do you work out the area of a circle?",
    "What do you do when it rains?",
    "",
]


@pytest.mark.parametrize(("text", "intent"), POSITIVE)
def test_intents_fire_on_their_paraphrases(book, text, intent):
    match = book.match(text, "en")
    assert match is not None, text
    assert match.intent == intent and match.language == "en"
    assert match.answer and "{" not in match.answer


@pytest.mark.parametrize("text", NEGATIVE)
def test_ordinary_sentences_with_the_keywords_are_not_hijacked(book, text):
    assert book.match(text, "en") is None


def test_answers_fill_placeholders_and_values_can_be_overridden(book):
    assert book.match("What's your name?", "en").answer.startswith("My name is Smol.")
    ava = load_rules(RULES, values={"robot_name": "Ava"})
    assert ava.match("What's your name?", "en").answer.startswith("My name is Ava.")
    # The name is also a politeness word: "hey Ava, ..." matches, "hey Smol, ..." no longer.
    assert ava.match("Hey Ava, who are you?", "en").intent == "robot_name"
    assert ava.match("Hey Smol, who are you?", "en") is None
    assert ava.match("I'm Ava's friend", "en") is None


def test_german_intents_and_language_fallback(book):
    match = book.match("Wie heißt du?", "de-DE")
    assert match.intent == "robot_name" and match.language == "de"
    assert match.answer.startswith("Ich heiße Smol")
    # Asked in German while the persona speaks English: answered in German.
    assert book.match("Sag mal, wo ist der Not-Aus?", "en").intent == "how_to_stop"
    assert book.match("Wer hat dich gebaut?", "").language == "de"
    assert book.match("Mein Name ist Anna.", "de") is None
    assert book.match("Wie heißt der Fluss dort?", "de") is None
    assert set(book.languages) == {"en", "de"}
    assert "robot_name" in book.intents() and "how_to_stop" in book.intents()


def test_long_utterances_are_never_intents(book):
    assert book.match("what is your name " + "x" * 200, "en") is None
    assert book.match("what is your name " * 1000, "en") is None


def test_matching_takes_microseconds(book):
    sentences = [t for t, _ in POSITIVE] + NEGATIVE
    book.match("warm up", "en")
    started = time.perf_counter()
    rounds = 50
    for _ in range(rounds):
        for text in sentences:
            book.match(text, "en")
    mean = (time.perf_counter() - started) / (rounds * len(sentences))
    assert mean < 1e-3, f"{mean * 1e6:.0f} us per match"


def _raw() -> dict:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["intents"]["maker"]["patterns"]["en"].append("who (made"), "bad regex"),
        (lambda r: r["intents"]["maker"]["answer"].pop("de"), "missing answer for 'de'"),
        (lambda r: r["intents"]["maker"]["patterns"]["en"].append("(?:you)?"), "empty utterance"),
        (lambda r: r["intents"]["maker"].update(answers={}), "unknown key"),
        (lambda r: r.update(extra=1), "unknown key"),
        (
            lambda r: r["intents"]["maker"]["answer"].update(en="Built by {builder}."),
            "no value for placeholder",
        ),
        (
            lambda r: r["intents"]["maker"]["examples"]["en"].append("who made this cake"),
            "matches nothing",
        ),
        (lambda r: r["intents"]["maker"].update(patterns={}), "no patterns"),
        (lambda r: r.update(intents={}), "no intents"),
        (lambda r: r["politeness"]["en"]["prefix"].append("(("), "bad regex"),
    ],
)
def test_bad_rule_files_are_rejected_with_a_clear_error(edit, message):
    raw = _raw()
    edit(raw)
    with pytest.raises(RuleError, match=message):
        parse_rules(raw, "rules.yaml")


def test_unreadable_or_invalid_files(tmp_path):
    with pytest.raises(RuleError, match="cannot read rules file"):
        load_rules(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("intents: [unclosed", encoding="utf-8")
    with pytest.raises(RuleError, match="not valid YAML"):
        load_rules(bad)


def test_a_minimal_custom_rule_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "values: {room: 'B2.14'}\n"
        "intents:\n"
        "  charging_room:\n"
        "    patterns: {en: ['where do you charge', 'where is your charger']}\n"
        "    answer: {en: 'My charger is in room {room}.'}\n",
        encoding="utf-8",
    )
    book = load_rules(path)
    match = book.match("Where do you charge?", "en")
    assert (
        match.answer == "My charger is in room B2.14." and match.paraphrase == "where do you charge"
    )
    # No politeness configured: only the bare question matches.
    assert book.match("Please, where do you charge?", "en") is None
    assert book.match("where do you charge your phone", "en") is None
