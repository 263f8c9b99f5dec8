"""Plain data across the sandbox boundary: a tagged JSON encoding of builtin values, nothing else.

Used on both sides: the sandboxed runner (`_sandbox_child.py`, which imports this file as a sibling module) encodes
what a function returned; the evaluating process decodes it and compares. Only exact builtin types cross:
None, bool, int, float (nan, inf and -0.0 included), complex, str, bytes, list, tuple, dict (keys of any such type),
set and frozenset; collections.Counter, OrderedDict and defaultdict (exactly these classes) cross as the plain dict
of their items (an honest `Counter` result equals a dict in the test, as it did in the reference harness). Any other
type, a subclass of int, str, list, dict... included, is refused by `encode`, so an object whose `__eq__` lies can
never reach the comparison; `decode` type-checks everything it builds, so a forged line either decodes to plain
builtin data or raises `ValueError`.

Format: JSON scalars and arrays stand for themselves (int within +-2**63, finite float, str, bool, null, list);
every other value is an object {"t": tag, "v": payload}: "int" (hex string), "float" ("nan", "inf", "-inf"),
"complex" ([re, im]), "bytes" (hex), "tuple" / "set" / "frozenset" ([items]), "dict" ([[key, value], ...]).
"""

import json
import math
from collections import Counter, OrderedDict, defaultdict

MAX_DEPTH = 200
"""Deepest nesting encoded or decoded (cycles and absurd nesting end as errors, not as a RecursionError)."""
MAX_ITEMS = 10_000_000
"""Most container elements in one value: a bigger result (Mbpp/255's canonical output for one input is 128 million
strings, ~1 GB of JSON) is refused while it is being encoded instead of after minutes."""
MAX_SAME_HASH = 16
"""Most set elements / dict keys sharing one hash value: more is refused as hash flooding (honest data has 1-2)."""
_BIG = 1 << 63
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MAPPINGS = (Counter, OrderedDict, defaultdict)  # the classes as imported before any program ran


class NotPlainData(TypeError):
    """The value holds an object of a type that may not cross the sandbox boundary."""


def encode(value) -> str:
    """Compact JSON text of `value`; raises `NotPlainData` naming the first refused type."""
    return json.dumps(encode_value(value), ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def encode_value(value, max_items: int = MAX_ITEMS):
    """The JSON-compatible structure of `value` (what `encode` serialises); `NotPlainData` when refused."""
    return _enc(value, 0, [max_items])


def _enc(x, depth: int, budget: list):
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH} (or a cycle)")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -_BIG < x < _BIG else {"t": "int", "v": hex(x)}
    if t is float:
        return x if math.isfinite(x) else {"t": "float", "v": repr(x)}
    if t is list:
        return _enc_items(x, depth, budget)
    if t is tuple or t is set or t is frozenset:
        return {"t": t.__name__, "v": _enc_items(x, depth, budget)}
    if t is dict or t in _MAPPINGS:  # the stdlib mappings cross as a plain dict, read with dict's own method
        _spend(budget, 2 * len(x))
        return {"t": "dict", "v": [[_enc(k, depth + 1, budget), _enc(v, depth + 1, budget)]
                                   for k, v in dict.items(x)]}
    if t is bytes:
        return {"t": "bytes", "v": x.hex()}
    if t is complex:
        return {"t": "complex", "v": [_enc(x.real, depth + 1, budget), _enc(x.imag, depth + 1, budget)]}
    raise NotPlainData(f"a {t.__module__}.{t.__qualname__} is not plain data")


def _spend(budget: list, n: int) -> None:
    budget[0] -= n
    if budget[0] < 0:
        raise NotPlainData(f"more than {MAX_ITEMS} elements")


def _enc_items(items, depth: int, budget: list) -> list:
    """Elements of a list / tuple / set: scalars inline (the common case, and the fast one), the rest recursively."""
    _spend(budget, len(items))
    out = []
    for i in items:
        t = type(i)
        if (t is int and -_BIG < i < _BIG) or t is str or t is bool or i is None or (t is float and math.isfinite(i)):
            out.append(i)
        else:
            out.append(_enc(i, depth + 1, budget))
    return out


def decode(text: str | bytes):
    """The value encoded in `text`; `ValueError` for anything `encode` cannot have produced."""
    try:
        raw = json.loads(text, parse_constant=_refuse_constant)
        return _dec(raw, 0)
    except (RecursionError, TypeError, OverflowError, MemoryError) as exc:
        raise ValueError(f"not plain data: {type(exc).__name__}: {exc}"[:300]) from None


def _refuse_constant(name: str):
    raise ValueError(f"bare {name} is not part of the encoding")


def _dec(x, depth: int):
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    t = type(x)
    if x is None or t is bool or t is str or t is float:
        return x
    if t is int:
        if not -_BIG < x < _BIG:
            raise ValueError("a big int must be hex-tagged")
        return x
    if t is list:
        return _dec_items(x, depth)
    if t is not dict or set(x) != {"t", "v"}:
        raise ValueError(f"unexpected JSON {t.__name__}")
    return _dec_tagged(x["t"], x["v"], depth)


def _dec_items(items: list, depth: int) -> list:
    out = []
    for i in items:
        t = type(i)
        if t is str or t is float or t is bool or i is None or (t is int and -_BIG < i < _BIG):
            out.append(i)
        else:
            out.append(_dec(i, depth + 1))
    return out


def _dec_tagged(tag, v, depth: int):
    if tag == "int" and type(v) is str:
        return int(v, 16)  # hex: linear time, not limited by sys.int_info.str_digits_check_threshold
    if tag == "float" and v in _FLOATS:
        return _FLOATS[v]
    if tag == "bytes" and type(v) is str:
        return bytes.fromhex(v)
    if type(v) is not list:
        raise ValueError(f"bad payload for tag {tag!r}")
    if tag == "tuple":
        return tuple(_dec_items(v, depth))
    if tag in ("set", "frozenset"):
        items = _dec_items(v, depth)
        return (set if tag == "set" else frozenset)(_unflooded(items))
    if tag == "dict":
        if not all(type(kv) is list and len(kv) == 2 for kv in v):
            raise ValueError("dict payload must be [key, value] pairs")
        keys = _unflooded([_dec(k, depth + 1) for k, _ in v])
        return dict(zip(keys, (_dec(val, depth + 1) for _, val in v)))
    if tag == "complex" and len(v) == 2:
        re, im = (_dec(p, depth + 1) for p in v)
        if type(re) is float and type(im) is float:
            return complex(re, im)
    raise ValueError(f"unknown tag or bad payload: {tag!r}")


def _unflooded(items: list) -> list:
    """`items` after checking that few share a hash: int and tuple hashes are predictable, and thousands of
    colliding keys would make building the set quadratic in the evaluating process."""
    counts: dict[int, int] = {}
    for item in items:
        h = hash(item)  # TypeError for unhashable items, as set() would raise
        counts[h] = counts.get(h, 0) + 1
        if counts[h] > MAX_SAME_HASH:
            raise ValueError("too many set elements / dict keys with one hash value")
    return items
