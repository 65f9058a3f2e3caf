"""Checks of what users send, and cleaning of what models send, before anything is stored.

Plain functions with no database access: the socket, REST serializers and the turn steps share them.
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

from django.conf import settings

from chat.exceptions import InvalidInput


def validate_text(value: str, name: str) -> str:
    """Text every database stores: no NUL characters, no lone surrogates."""
    if "\x00" in value or (name == "output" and "\\u0000" in value):
        raise InvalidInput(f"{name} may not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode text.") from None
    return value


def storable_text(text: str) -> str:
    """Model output as every database stores it: NUL characters dropped, lone surrogates made U+FFFD.

    User input with these is refused (`validate_text`); model output is kept, cleaned, since
    PostgreSQL would refuse the whole reply for one bad character.
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def storable_json(value: Any) -> Any:
    """A JSON value from a model (tool arguments) with every string, keys too, cleaned like `storable_text`."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_json(v) for v in value]
    return value


def validate_content(content: object) -> str:
    if not isinstance(content, str):
        raise InvalidInput("content must be a string.")
    if not content.strip():
        raise InvalidInput("content may not be blank.")
    limit = settings.CHAT["MAX_MESSAGE_CHARS"]
    if len(content) > limit:
        raise InvalidInput(f"content is too long: {len(content)} characters, at most {limit}.")
    return validate_text(content, "content")


def validate_emoji(emoji: object) -> str:
    """One emoji: a pictograph with optional modifiers and variation selectors, several joined by
    ZWJ (👩‍💻), a flag (two regional indicators) or a keycap (1️⃣). Nothing else."""
    if not isinstance(emoji, str) or not emoji or len(emoji) > 16:
        raise InvalidInput("emoji must be a single emoji.")
    for part in emoji.split("\u200d"):
        pictographs = 0
        for ch in part:
            category = unicodedata.category(ch)
            if category == "So":
                pictographs += 1
            elif ch in ("\ufe0f", "\ufe0e", "\u20e3") or category in ("Sk", "Mn", "Me"):
                continue
            elif ch in "#*0123456789" and part.endswith("\u20e3") and part.index(ch) == 0:
                pictographs += 1
            else:
                raise InvalidInput("emoji must be a single emoji.")
        flag = pictographs == 2 and all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in part if unicodedata.category(c) == "So")
        if pictographs != 1 and not flag:
            raise InvalidInput("emoji must be a single emoji.")
    return emoji


def validate_client_id(client_id: object) -> str | None:
    if client_id is None:
        return None
    try:
        return str(uuid.UUID(str(client_id)))
    except (TypeError, ValueError, AttributeError):
        raise InvalidInput("client_id must be a UUID.") from None
