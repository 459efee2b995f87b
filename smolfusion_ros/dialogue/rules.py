"""Rule answers: configured whole-utterance intents answered instantly, without the LLM.

The original system matched keywords anywhere in a sentence, so "stop the music and tell me a
story" got the emergency-stop answer. Here an intent matches only when the *whole* utterance is
one of its paraphrases, optionally wrapped in politeness ("please", "hey Smol", "thanks"), so a
sentence that merely contains a keyword in another sense goes to the language model.

    book = load_rules(config_path("rules.yaml"), values={"robot_name": "Ava"})
    match = book.match("What's your name?", "en")   # -> RuleMatch(intent="robot_name", ...)

Matching is a handful of precompiled anchored regular expressions over a normalised utterance
(lower case, typographic quotes folded, whitespace collapsed); it takes a few microseconds.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

_INTENT_KEYS = {"answer", "patterns", "examples"}
_TOP_KEYS = {"values", "politeness", "intents", "max_chars", "default_language"}
# Separators allowed between politeness words and the intent ("hey, Smol! what's ...").
_SEP = r"[\s,;:!.\-]*"
# Trailing punctuation and emoticons a typed or transcribed question may end with.
_TAIL = r"[\s?!.,;:…]*"
_SEP_PLUS = r"[\s?!.,;:…\-]+"
_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'", "“": '"', "”": '"'})


class RuleError(ValueError):
    """The rules file is invalid; the message names the file, intent, language and pattern."""


@dataclass(frozen=True)
class RuleMatch:
    intent: str
    language: str
    answer: str
    paraphrase: str  # the configured pattern that matched, for logs and tests


@dataclass(frozen=True)
class _CompiledIntent:
    intent: str
    language: str
    regex: re.Pattern[str]
    sources: tuple[str, ...]
    answer: str


def normalise_utterance(text: str) -> str:
    """Lower case, NFC, typographic quotes folded to ASCII, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text).translate(_QUOTES)
    return " ".join(text.lower().split())


def base_language(language: str) -> str:
    """'en-US' / 'en_GB' / 'EN' -> 'en'; '' stays ''."""
    return language.strip().lower().replace("_", "-").split("-")[0]


def _placeholders(template: str) -> set[str]:
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            if not name.isidentifier():
                raise ValueError(f"placeholder {{{name}}} is not a plain name")
            names.add(name)
    return names


def _fill_pattern(pattern: str, values: Mapping[str, str]) -> str:
    """Replace {name} in a pattern by the escaped value (regex quantifiers {2,3} are kept)."""
    return re.sub(
        r"\{([A-Za-z_][A-Za-z0-9_]*)\}",
        lambda m: (
            re.escape(normalise_utterance(values[m.group(1)]))
            if m.group(1) in values
            else m.group(0)
        ),
        pattern,
    )


class RuleBook:
    """Compiled intents per language. Thread-safe (read-only after construction)."""

    def __init__(
        self,
        intents: list[_CompiledIntent],
        languages: tuple[str, ...],
        default_language: str,
        max_chars: int,
    ) -> None:
        self._by_language: dict[str, list[_CompiledIntent]] = {}
        for item in intents:
            self._by_language.setdefault(item.language, []).append(item)
        self.languages = languages
        self.default_language = default_language
        self.max_chars = max_chars

    def intents(self) -> list[str]:
        return sorted({i.intent for items in self._by_language.values() for i in items})

    def match(self, text: str, language: str = "") -> RuleMatch | None:
        """The intent the whole utterance asks for, or None (then the LLM answers).

        The requested language is tried first, then the others: a visitor who asks in German
        gets the German answer whatever the persona's language. Utterances longer than
        `max_chars` are never intents (and cost nothing to reject).
        """
        if not text or len(text) > self.max_chars * 2:
            return None
        utterance = normalise_utterance(text)
        if not utterance or len(utterance) > self.max_chars:
            return None
        wanted = base_language(language) or self.default_language
        order = [wanted] + [lang for lang in self.languages if lang != wanted]
        for lang in order:
            for item in self._by_language.get(lang, ()):
                found = item.regex.match(utterance)
                if found:
                    index = next(
                        (int(k[1:]) for k, v in found.groupdict().items() if v is not None), 0
                    )
                    return RuleMatch(item.intent, lang, item.answer, item.sources[index])
        return None


def _compile_intent(
    where: str,
    intent: str,
    language: str,
    patterns: list[str],
    answer: str,
    values: Mapping[str, str],
    prefix: str,
    suffix: str,
) -> _CompiledIntent:
    branches = []
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern.strip():
            raise RuleError(f"{where}: intent {intent!r} ({language}): empty pattern")
        try:
            filled = _fill_pattern(pattern.strip(), values)
            single = re.compile(filled)
        except re.error as exc:
            raise RuleError(
                f"{where}: intent {intent!r} ({language}): bad regex {pattern!r}: {exc}"
            ) from None
        if single.fullmatch(""):
            raise RuleError(
                f"{where}: intent {intent!r} ({language}): pattern {pattern!r} matches an "
                "empty utterance"
            )
        # Named groups tell which paraphrase matched; the pattern's own groups stay inside.
        branches.append(f"(?P<p{index}>{filled})")
    body = "|".join(branches)
    # Each politeness word must be separated from the intent by a word boundary and may be
    # followed by separators; anything else in the utterance makes it a different sentence.
    composed = rf"^(?:(?:{prefix})\b{_SEP})*(?:{body})(?:{_SEP_PLUS}(?:{suffix})\b)*{_TAIL}$"
    try:
        regex = re.compile(composed)
    except re.error as exc:
        raise RuleError(f"{where}: intent {intent!r} ({language}): bad regex: {exc}") from None
    return _CompiledIntent(intent, language, regex, tuple(patterns), answer)


def _politeness(where: str, spec: dict, language: str, values: Mapping[str, str]) -> tuple:
    words = spec.get(language) or {}
    if not isinstance(words, dict):
        raise RuleError(f"{where}: politeness.{language} must map prefix/suffix to lists")
    out = []
    for key in ("prefix", "suffix"):
        items = words.get(key) or []
        if not isinstance(items, list):
            raise RuleError(f"{where}: politeness.{language}.{key} must be a list")
        parts = []
        for item in items:
            filled = _fill_pattern(str(item), values)
            try:
                re.compile(filled)
            except re.error as exc:
                raise RuleError(
                    f"{where}: politeness.{language}.{key}: bad regex {item!r}: {exc}"
                ) from None
            parts.append(f"(?:{filled})")
        # A never-matching alternative keeps the composed regex valid when the list is empty.
        out.append("|".join(parts) or r"(?!)")
    return tuple(out)


def load_rules(path: str | Path, values: Mapping[str, str] | None = None) -> RuleBook:
    """Load and validate a rules file; `values` override its placeholder values.

    Raises RuleError naming the problem: unknown keys, a bad or empty-matching regex, a
    language with patterns but no answer, a placeholder without a value, an example that the
    intent does not match.
    """
    where = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise RuleError(f"cannot read rules file {where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{where}: not valid YAML: {exc}") from None
    return parse_rules(raw, where, values)


def parse_rules(
    raw: dict, where: str = "<rules>", values: Mapping[str, str] | None = None
) -> RuleBook:
    """Build a RuleBook from an already parsed mapping (see load_rules)."""
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: the top level must be a mapping")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    merged = {str(k): str(v) for k, v in (raw.get("values") or {}).items()}
    merged.update({str(k): str(v) for k, v in (values or {}).items()})
    politeness = raw.get("politeness") or {}
    intents_spec = raw.get("intents") or {}
    if not isinstance(intents_spec, dict) or not intents_spec:
        raise RuleError(f"{where}: no intents defined")
    max_chars = int(raw.get("max_chars", 160))
    compiled: list[_CompiledIntent] = []
    languages: list[str] = []
    polite_cache: dict[str, tuple] = {}
    for intent, spec in intents_spec.items():
        if not isinstance(spec, dict):
            raise RuleError(f"{where}: intent {intent!r} must be a mapping")
        unknown = set(spec) - _INTENT_KEYS
        if unknown:
            raise RuleError(f"{where}: intent {intent!r}: unknown key(s) {sorted(unknown)}")
        answers = spec.get("answer") or {}
        patterns = spec.get("patterns") or {}
        if not isinstance(patterns, dict) or not patterns:
            raise RuleError(f"{where}: intent {intent!r}: no patterns (a mapping language: list)")
        if not isinstance(answers, dict):
            raise RuleError(f"{where}: intent {intent!r}: answer must map language to text")
        for language, items in patterns.items():
            language = str(language)
            if not isinstance(items, list) or not items:
                raise RuleError(f"{where}: intent {intent!r} ({language}): patterns must be a list")
            template = answers.get(language)
            if not isinstance(template, str) or not template.strip():
                raise RuleError(f"{where}: intent {intent!r}: missing answer for {language!r}")
            try:
                missing = _placeholders(template) - set(merged)
            except ValueError as exc:
                raise RuleError(f"{where}: intent {intent!r} ({language}): {exc}") from None
            if missing:
                raise RuleError(
                    f"{where}: intent {intent!r} ({language}): no value for placeholder(s) "
                    f"{', '.join(sorted(missing))} (define them under values:)"
                )
            answer = " ".join(template.format_map(merged).split())
            if language not in polite_cache:
                polite_cache[language] = _politeness(where, politeness, language, merged)
            compiled.append(
                _compile_intent(
                    where, intent, language, items, answer, merged, *polite_cache[language]
                )
            )
            if language not in languages:
                languages.append(language)
    default_language = str(raw.get("default_language") or languages[0])
    book = RuleBook(compiled, tuple(languages), default_language, max_chars)
    # Examples ({placeholders} filled) are checked at load time: an operator who edits a
    # pattern learns at once that it no longer matches what it was written for.
    for intent, spec in intents_spec.items():
        for language, examples in (spec.get("examples") or {}).items():
            for example in examples or []:
                example = str(example).format_map(merged)
                found = book.match(example, str(language))
                if found is None or found.intent != intent:
                    got = found.intent if found else "nothing"
                    raise RuleError(
                        f"{where}: intent {intent!r}: example {example!r} matches {got}"
                    )
    return book
