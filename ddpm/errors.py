"""How ddpm words an error it passes on: one line, whatever the library below said, and what
came from outside (a file's name, another program's error) shown as it is, moving nothing."""

import re

# C0 and C1 control characters and the Unicode line and paragraph separators: a terminal acts on
# them (ESC starts an escape sequence, CR returns the cursor, a newline splits a line).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with each control character written as its escape (ESC as \\x1b, a newline as
    \\n): what prints is the text itself, on one line, and no escape sequence reaches the
    terminal or a Markdown file."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line of text, at most `limit` characters (its type name when it has
    no text): library errors run to many lines, and a message here is one."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
