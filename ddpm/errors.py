"""How ddpm words an error it passes on: one line, whatever the library below said."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line of text, at most `limit` characters (its type name when it has
    no text): library errors run to many lines, and a message here is one."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
