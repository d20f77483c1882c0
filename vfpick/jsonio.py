"""JSON for the hook path, on CPython's C accelerator, without importing ``json``.

``import json`` pulls in ``re`` (and through it ``enum`` and ``functools``): ~11 ms here, as
much as a bare interpreter start, on every VM start. ``_json`` holds the same C scanner and
encoder that ``json`` uses; we drive them directly and fall back to ``json`` where ``_json``
is missing (other interpreters). Errors raise ValueError (``json.JSONDecodeError`` is one).
"""

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None


def _no_constants(name):
    raise ValueError("%s is not valid JSON" % name)


class _Context:
    # The attributes _json.make_scanner reads from json.JSONDecoder.
    strict = True
    object_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constants)

    def __init__(self, object_pairs_hook):
        self.object_pairs_hook = object_pairs_hook


def loads(text, object_pairs_hook=None):
    """Parses a JSON document (str). Raises ValueError on anything else."""
    if _json is None:
        import json

        return json.loads(text, object_pairs_hook=object_pairs_hook)
    scan = _json.make_scanner(_Context(object_pairs_hook))
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, end = scan(text, start)
    except StopIteration as e:
        raise ValueError("Expecting value at offset %d" % e.value) from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except Exception:  # noqa: BLE001
        # The C scanner builds its error through json.decoder; without json imported,
        # CPython 3.11 surfaces a SystemError instead. On this (rare) error path, let the
        # json module give the precise message.
        import json

        try:
            json.loads(text, object_pairs_hook=object_pairs_hook)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        except ValueError:
            raise
        raise ValueError("invalid JSON") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after JSON at offset %d" % end)
    return value


def _refuse(obj):
    raise TypeError("%r is not JSON serializable" % (obj,))


_encoder = None


def dumps_compact(value):
    """One-line JSON of dicts, lists, strings, numbers, bools, None (keys kept in order)."""
    if _json is None:
        import json

        return json.dumps(value, separators=(", ", ": "))
    global _encoder
    if _encoder is None:
        # markers=None: no cycle check (our values are trees), and one encoder serves every call.
        _encoder = _json.make_encoder(None, _refuse, _json.encode_basestring_ascii, None, ": ",
                                      ", ", False, False, False)
    return "".join(_encoder(value, 0))
