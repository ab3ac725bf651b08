"""Toy-world prompts: which object a prompt names and which view it asks for.

Grammar (case-insensitive, punctuation ignored, articles "a", "an", "the" optional):
``<color> <shape>`` ("a red cube") or ``<object>`` ("a snowman"), optionally with a view, either as a
threestudio suffix (", front view", ", side view", ", back view", ", overhead view") or as a prefix
("front view of ...", "side view of ...", "backside view of ...", "overhead view of ...").
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from dreamengine.errors import PromptError
from dreamengine.toyworld.objects import ASYMMETRIC_OBJECTS, COLORS, SHAPES, ToyObject, colored_shape

ARTICLES = ("a", "an", "the")
VIEWS = ("front", "side", "back", "overhead")
SYNONYMS = {"ball": "sphere", "box": "cube", "donut": "torus", "doughnut": "torus", "cup": "mug"}
EMPTY_MESSAGE = "the prompt is empty; give a toy-world prompt such as 'a red cube'"

_VIEW_WORDS = {"front": "front", "side": "side", "back": "back", "backside": "back", "overhead": "overhead"}
_PREFIX = re.compile(r"^\s*(?:the\s+)?(front|side|back|backside|overhead)\s+view\s+of\b\s*(.*)$",
                     re.IGNORECASE | re.DOTALL)
_SUFFIX = re.compile(r"^(.*?)[\s,;:]*\b(front|side|back|backside|overhead)\s+view[\s.!]*$",
                     re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=1)
def _world() -> tuple[ToyObject, ...]:
    shapes = [colored_shape(color, shape) for shape in SHAPES for color in COLORS]
    return tuple(shapes) + tuple(make() for make in ASYMMETRIC_OBJECTS.values())


def all_objects() -> list[ToyObject]:
    """Every object of the toy world in a fixed order: shapes x colors (shape-major), then the
    asymmetric objects."""
    return list(_world())


def _lookup(color: str | None, noun: str) -> ToyObject:
    """The object for a parsed (color, noun) pair: (``"red"``, ``"cube"``) or (None, ``"snowman"``)."""
    return next(o for o in _world() if o.color_name == color and o.noun == noun)


def vocabulary() -> dict[str, list[str] | dict[str, str]]:
    """Every word the toy world understands, by kind (for docs and error messages)."""
    return {"colors": list(COLORS), "shapes": list(SHAPES), "objects": list(ASYMMETRIC_OBJECTS),
            "synonyms": dict(SYNONYMS), "articles": list(ARTICLES), "views": list(VIEWS)}


def split_view(prompt: str) -> tuple[str, str | None]:
    """Split a view phrase off a prompt: "a red cube, side view" -> ("a red cube", "side");
    "backside view of a mug" -> ("a mug", "back"); "a mug" -> ("a mug", None)."""
    match = _PREFIX.match(prompt)
    if match is not None:
        return match.group(2).strip(), _VIEW_WORDS[match.group(1).lower()]
    match = _SUFFIX.match(prompt)
    if match is not None:
        return match.group(1).strip(), _VIEW_WORDS[match.group(2).lower()]
    return prompt.strip(), None


def _known_words_message() -> str:
    return (f"The toy world knows colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}; "
            f"objects: {', '.join(ASYMMETRIC_OBJECTS)}; synonyms: "
            f"{', '.join(f'{k}={v}' for k, v in SYNONYMS.items())}; articles a/an/the; and view phrases "
            "(', front view', ', side view', ', back view', ', overhead view', 'front view of ...'). "
            "Write prompts like 'a red cube' or 'a snowman'.")


def _unknown_word(word: str, prompt: str) -> PromptError:
    known = [*COLORS, *SHAPES, *ASYMMETRIC_OBJECTS, *SYNONYMS, *ARTICLES]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return PromptError(f"unknown word '{word}' in prompt '{prompt}'{hint}. {_known_words_message()}")


def parse_prompt(prompt: str) -> ToyObject:
    """The toy-world object a prompt names; any view phrase is ignored (see :func:`split_view`).

    Raises PromptError for an empty prompt, an unknown word, a shape without a color (or a color without
    a shape), a color on an object that has its own colors, or more than one object.
    """
    if not prompt.strip():
        raise PromptError(EMPTY_MESSAGE)
    object_prompt, _ = split_view(prompt)
    colors: list[str] = []
    nouns: list[str] = []
    for word in re.findall(r"[a-z0-9]+", object_prompt.lower()):
        word = SYNONYMS.get(word, word)
        if word in ARTICLES:
            continue
        if word in COLORS:
            colors.append(word)
        elif word in SHAPES or word in ASYMMETRIC_OBJECTS:
            nouns.append(word)
        else:
            raise _unknown_word(word, prompt)
    if not nouns:
        if colors:
            raise PromptError(f"prompt '{prompt}' has a color but no shape; add one, e.g. "
                              f"'a {colors[0]} cube' (shapes: {', '.join(SHAPES)}; objects: "
                              f"{', '.join(ASYMMETRIC_OBJECTS)})")
        raise PromptError(f"prompt '{prompt}' names no object; give a toy-world prompt such as 'a red cube'")
    if len(nouns) > 1:
        raise PromptError(f"prompt '{prompt}' names {len(nouns)} things ({', '.join(nouns)}); the toy world "
                          "renders one object per prompt, e.g. 'a red cube'")
    if len(colors) > 1:
        raise PromptError(f"prompt '{prompt}' has {len(colors)} colors ({', '.join(colors)}); give one, "
                          f"e.g. 'a {colors[0]} {nouns[0]}'")
    noun = nouns[0]
    if noun in ASYMMETRIC_OBJECTS:
        if colors:
            raise PromptError(f"the {noun} has its own colors; drop '{colors[0]}' from '{prompt}' "
                              f"(write 'a {noun}')")
        return _lookup(None, noun)
    if not colors:
        raise PromptError(f"prompt '{prompt}' needs a color for the {noun}, e.g. 'a red {noun}' "
                          f"(colors: {', '.join(COLORS)})")
    return _lookup(colors[0], noun)
