"""Text bound for a terminal or a log: `printable`.

Model output, a user's data, and errors or log records that quote either can hold control
characters. Printed raw, an escape sequence moves the cursor, rewrites or clears lines,
recolours the console, sets the window title or, in many terminals, writes the clipboard
(ANSI CSI and OSC sequences); a carriage return overwrites the line before it; bidirectional
overrides show text in another order than it has. Every line rig_ray prints of such text
goes through `printable`; files keep the text as it is.
"""

from __future__ import annotations

import re
import typing as t

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 control characters but line feed and tab, and the bidirectional marks and
overrides."""


def printable(text: str) -> str:
    """`text` with each control character but line feeds and tabs written as its escape
    (`\\x1b`, `\\r`, `\\u202e`)."""
    return _UNSAFE.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def printable_line(line: str) -> str:
    """A line forwarded from another process, as `printable` makes it, keeping what a terminal
    would show of a line redrawn with carriage returns (a progress bar): its last drawing."""
    drawn = [part for part in line.split("\r") if part]
    return printable(drawn[-1] if drawn else "")


__all__: t.Sequence[str] = ["printable", "printable_line"]
