"""Text that came from outside, made safe to log, store as an error, or print.

WaveSpeed's error messages quote what they were sent; a user's request can hold
anything in a field name or an image reference. Written raw, a newline starts a
fake line in a log, and a terminal obeys escape sequences (clear the screen, set
the title, right-to-left overrides that reorder what is shown). ``printable``
escapes every character that is not printable (controls, format characters such
as bidi overrides and zero-width joiners, line and paragraph separators) the way
Python writes them (``\\n``, ``\\x1b``, ``\\u202e``) and caps the length, so one
piece of outside text is always one visible line of bounded size.
"""

from __future__ import annotations

#: The longest piece of outside text kept whole (characters, after escaping).
MAX_OUTSIDE_TEXT_CHARS = 300

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, limit: int = MAX_OUTSIDE_TEXT_CHARS) -> str:
    """``text`` (anything; ``str()`` of it) with control and format characters escaped,
    cut to ``limit`` characters with a note of how many were cut."""
    value = text if isinstance(text, str) else str(text)
    if not value.isprintable():
        value = "".join(char if char.isprintable() else _escape(char) for char in value)
    if len(value) > limit:
        cut = len(value) - limit
        value = value[:limit] + f"... [{cut} more characters]"
    return value


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
