"""Names from outside (argv, domain XML): refused at the edges when they hold control
characters or are not UTF-8, escaped wherever vfpick prints one that got in anyway (a state
file written before this check).

A newline in a domain name would forge a row of ``vfpick status``; a lone surrogate (argv
bytes that are not UTF-8, decoded with surrogateescape) cannot be encoded and would kill the
metrics exposition. On the hook path of vfpick's own domains: no imports.
"""


def _bad(ch):
    o = ord(ch)
    return o < 0x20 or o == 0x7f or 0x80 <= o < 0xa0 or 0xd800 <= o < 0xe000


def problem(text):
    """Why *text* is no acceptable name (a short phrase), or None."""
    for ch in text:
        if _bad(ch):
            o = ord(ch)
            if 0xd800 <= o < 0xe000:
                return "is not UTF-8"
            return "holds a control character (U+%04X)" % o
    return None


def printable(text):
    """*text* with control characters and surrogates escaped (``\\n``, ``\\x1b``, ``\\udcff``),
    backslashes doubled: one line, encodable, and not mistaken for an escape."""
    if not any(_bad(ch) or ch == "\\" for ch in text):
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif _bad(ch):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                       if ord(ch) < 0xd800 else "\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def shell_word(text):
    """*text* as one shell word (shlex.quote, without importing shlex and re on the hook path):
    a command vfpick prints must survive copy-paste whatever the name or path in it."""
    if text and all(c.isalnum() or c in "/-_.:@%+=," for c in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"
