"""Whether a short answer means the same as the reference, decided locally and never by guessing.

A false match rewards a wrong answer, so every rule here only says "same" when the meaning is plain:
  numbers   compared as exact rationals: signs, fractions (1/2, \\frac{1}{2}), decimals, thousands
            separators (1,000), scientific forms (1.2e-3, 1.2 \\times 10^{-3}, 10^{-3}); a decimal
            with at least 3 significant digits also matches a value it is a rounding of (3.14 ~ 3.14159)
  units     5 m = 5 meters = 5\\,\\text{m}; SI prefixes convert (5 cm = 0.05 m); an answer may leave out
            the reference's unit, never give a different one; 30° = 30^\\circ = 30 degrees
  lists     (1, 2) element by element, in order
  LaTeX     $...$, \\boxed{}, \\text{}, \\left/\\right, \\dfrac and spacing commands do not count
  text      case, spacing, a leading article, surrounding quotes and a final full stop do not count
Anything else (algebra, unordered sets, synonyms) is left to the LLM judge: "not the same" here.
An answer that is empty after cleaning never matches, not even another empty one.
Standard library only: this runs inside verl's reward workers.
"""

import re
from dataclasses import dataclass
from fractions import Fraction

from llm_bridge.text import split_top_level

# --- cleaning ----------------------------------------------------------------------------------

_WRAPPERS = [  # (pattern, replacement), applied until nothing changes
    (r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}", r"\1"),
    (r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|operatorname|mbox)\s*\{((?:[^{}]|\{[^{}]*\})*)\}", r"\1"),
]
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~|\\left|\\right|\\displaystyle")
_MATH_DELIMITERS = re.compile(r"^\$\$?(.*?)\$?\$$|^\\\((.*)\\\)$|^\\\[(.*)\\\]$", re.DOTALL)


def clean(text: str) -> str:
    """The answer without markdown, math delimiters and LaTeX wrappers."""
    text = text.strip().replace("\u2212", "-").replace("\u2013", "-").replace("\u00d7", r"\times")
    text = text.replace("\u00b7", r"\cdot").replace("\u2009", " ").replace("\u00a0", " ")
    for _ in range(4):
        before = text
        text = text.strip().strip("*_").strip()
        match = _MATH_DELIMITERS.match(text)
        if match:
            text = next(g for g in match.groups() if g is not None)
        for pattern, repl in _WRAPPERS:
            text = re.sub(pattern, repl, text)
        text = _SPACING.sub(" ", text)
        text = re.sub(r"\\[dt]frac", r"\\frac", text)
        text = re.sub(r"\s+", " ", text).strip()
        if text.endswith(".") and not text.endswith(".."):  # a full stop
            text = text[:-1].strip()
        if len(text) >= 2 and text[0] + text[-1] in ('""', "''", "``", "\u201c\u201d", "\u2018\u2019"):
            text = text[1:-1].strip()
        if text == before:
            break
    return text


# --- numbers with units ------------------------------------------------------------------------

_PLAIN = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+"
_NUMBER = re.compile(rf"^({_PLAIN})(?:\s*(?:e|E)\s*([+-]?\d+)|\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{{?\s*([+-]?\d+)\s*\}}?)?")
_POWER = re.compile(r"^([+-]?)10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?")
_FRACTION = re.compile(r"^([+-]?)\\frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
_SLASH = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)(?![\d.])")

_PREFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "c": Fraction(1, 100), "m": Fraction(1, 10**3),
             "u": Fraction(1, 10**6), "\u00b5": Fraction(1, 10**6), "\u03bc": Fraction(1, 10**6), "n": Fraction(1, 10**9),
             "p": Fraction(1, 10**12)}
_BASE_UNITS = ("m", "g", "s", "L", "J", "eV", "Hz", "W", "N", "Pa", "V", "A", "K", "mol")
_WORDS = {  # spelled-out units -> symbols (lower-case keys)
    "meter": "m", "meters": "m", "metre": "m", "metres": "m", "kilometer": "km", "kilometers": "km", "kilometre": "km",
    "kilometres": "km", "centimeter": "cm", "centimeters": "cm", "millimeter": "mm", "millimeters": "mm",
    "nanometer": "nm", "nanometers": "nm", "second": "s", "seconds": "s", "sec": "s", "secs": "s", "gram": "g",
    "grams": "g", "kilogram": "kg", "kilograms": "kg", "liter": "L", "liters": "L", "litre": "L", "litres": "L",
    "joule": "J", "joules": "J", "watt": "W", "watts": "W", "newton": "N", "newtons": "N", "pascal": "Pa",
    "pascals": "Pa", "volt": "V", "volts": "V", "ampere": "A", "amperes": "A", "kelvin": "K", "mole": "mol",
    "moles": "mol", "hertz": "Hz", "electronvolt": "eV", "electronvolts": "eV", "degree": "°", "degrees": "°",
    "deg": "°", "percent": "%", "l": "L", "ev": "eV", "hz": "Hz", "kev": "keV", "mev": "MeV", "gev": "GeV",
}


@dataclass(frozen=True)
class Quantity:
    value: Fraction
    ulp: Fraction | None  # half of it is the rounding a written decimal allows; None: exact
    significant: int  # significant digits of a written decimal
    unit: str  # "" when none


def _decimal(mantissa: str, exponent: int) -> tuple[Fraction, Fraction | None, int]:
    mantissa = mantissa.replace(",", "")
    value = Fraction(mantissa) * Fraction(10) ** exponent
    digits = mantissa.lstrip("+-").replace(".", "").lstrip("0") or "0"
    if "." not in mantissa and exponent >= 0:
        return value, None, len(digits)  # an integer is exact
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return value, Fraction(10) ** (exponent - decimals), len(digits)


def _symbol(unit: str) -> bool:
    """A unit symbol with an SI prefix, e.g. km, ms, keV, or a known one like min, h, mph."""
    return unit in {"min", "h", "hr", "mph", "km/h", "m/s", "atm", "bar", "cal", "kcal", "Da", "kDa", "bp", "kb"} or \
        any(unit.endswith(b) and unit[: -len(b)] in _PREFIXES for b in _BASE_UNITS)


def _unit(rest: str) -> str | None:
    """The unit after a number, normalised; "" for none; None when the rest is not a unit."""
    rest = rest.strip().replace("{", "").replace("}", "")
    if not rest:
        return ""
    if rest in ("%", r"\%"):
        return "%"
    if re.fullmatch(r"\^\s*\\circ|\u00b0|\\degree", rest):
        return "°"
    if rest.lower() in _WORDS:
        return _WORDS[rest.lower()]
    parts = re.split(r"\s*/\s*", rest)
    if all(_symbol(part) for part in parts):
        return "/".join(parts)
    return None  # "42 maybe", "2x", "3 apples": not a unit this file knows, so not a plain number


def _in_base(unit: str) -> tuple[str, Fraction | int]:
    for base in _BASE_UNITS:
        if unit.endswith(base) and unit[: -len(base)] in _PREFIXES:
            return base, _PREFIXES[unit[: -len(base)]]
    return unit, 1


def quantity(text: str) -> Quantity | None:
    """A number, with its unit, from a cleaned answer; None when it is not one."""
    text = re.sub(r"^(?:\\approx|\u2248)\s*", "", text.strip())
    fraction, slash = _FRACTION.match(text), _SLASH.match(text)
    number, power = _NUMBER.match(text), _POWER.match(text)
    if fraction:
        sign, num, num1, den, den1 = fraction.groups()
        if int(den or den1) == 0:
            return None
        parts, end = (Fraction(int(num or num1), int(den or den1)) * (-1 if sign == "-" else 1), None, 0), fraction.end()
    elif slash:
        if int(slash.group(2)) == 0:
            return None
        parts, end = (Fraction(int(slash.group(1)), int(slash.group(2))), None, 0), slash.end()
    elif number and (number.group(2) or number.group(3)):  # 1.2e-3, 1.2 \times 10^{-3}
        parts, end = _decimal(number.group(1), int(number.group(2) or number.group(3))), number.end()
    elif power:  # 10^{-3}
        parts, end = (Fraction(10) ** int(power.group(2)) * (-1 if power.group(1) == "-" else 1), None, 0), power.end()
    elif number:
        parts, end = _decimal(number.group(1), 0), number.end()
    else:
        return None
    unit = _unit(text[end:])
    return None if unit is None else Quantity(*parts, unit)


def _close(a: Quantity, b: Quantity, scale_a=1, scale_b=1) -> bool:
    va, vb = a.value * scale_a, b.value * scale_b
    if va == vb:
        return True
    for rounded, scale, other in ((a, scale_a, vb), (b, scale_b, va)):
        # The less precise side is a written decimal of >= 3 significant digits that the other rounds to.
        if rounded.ulp is not None and rounded.significant >= 3:
            if abs(rounded.value * scale - other) <= rounded.ulp * scale / 2:
                return True
    return False


def same_quantity(prediction: Quantity, reference: Quantity) -> bool:
    if prediction.unit == reference.unit or not prediction.unit or not reference.unit:
        return _close(prediction, reference)  # a unit left out is the reference's
    base_p, scale_p = _in_base(prediction.unit)
    base_r, scale_r = _in_base(reference.unit)
    return base_p == base_r and _close(prediction, reference, scale_p, scale_r)


# --- choices, lists, text ----------------------------------------------------------------------

_CHOICE = re.compile(r"^(?:(?:option|choice|answer)\s+)?[(\[]?([A-Z])[)\]]?(?:\s*[.:)]\s*.*)?$", re.IGNORECASE | re.DOTALL)


def choice(text: str) -> str | None:
    """The letter of a standalone multiple-choice answer: "B", "(B)", "B.", "B) 42", "Option B";
    not "A lot depends". A lower-case letter counts only on its own."""
    text = clean(text)
    match = _CHOICE.match(text)
    if not match:
        return None
    letter = match.group(1)
    if letter.islower() and len(text) > 1 and not re.match(r"^[(\[]", text):
        return None  # "a." or "b) ..." may be prose; a lower-case letter counts alone or in brackets
    return letter.upper()


def _items(text: str) -> list[str] | None:
    """The items of "(a, b)", "[a, b]" or "a, b"; None when there are no top-level commas."""
    inner = text[1:-1] if len(text) >= 2 and text[0] + text[-1] in ("()", "[]") else text
    items = split_top_level(inner, "([{", ")]}")
    if len(items) < 2 or re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", inner.strip()):
        return None
    return [item.strip() for item in items]


_SYMBOLS = [(r"\\pi\b", "\u03c0"), (r"\\infty\b", "\u221e"), (r"\\(?:times|cdot)\b", "*"), (r"\\leq?\b", "\u2264"),
            (r"\\geq?\b", "\u2265"), (r"\\neq?\b", "\u2260"), (r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)"),
            (r"\u221a\s*\(?([\w.]+)\)?", r"sqrt(\1)"), (r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)"),
            (r"\\([A-Za-z]+)", r"\1")]


def canonical(text: str) -> str:
    """Text compared as written: lower case, LaTeX symbols spelled one way, spacing only between words."""
    text = clean(text).lower()
    for pattern, repl in _SYMBOLS:
        text = re.sub(pattern, repl, text)
    text = text.replace("{", "").replace("}", "")
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"(?<=[^a-z]) | (?=[^a-z])", "", text)  # keep a space only between two letters
    text = re.sub(r"^(?:the|a|an) (?=\S)", "", text)
    return text


_LHS = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?!=)(.+)$")


def _lhs_dropped(prediction: str, reference: str) -> tuple[str, str]:
    """"x = 5" -> "5" when only one side names the variable; "x = 5" and "y = 5" stay as written."""
    got, want = _LHS.match(prediction), _LHS.match(reference)
    if bool(got) == bool(want):
        return prediction, reference
    return (got.group(1) if got else prediction), (want.group(1) if want else reference)


def same(prediction: str, reference: str, answer_type: str | None = None) -> bool:
    """Whether the prediction means the reference. answer_type: HLE's "multipleChoice" or "exactMatch"."""
    if answer_type == "multipleChoice":
        want = choice(reference)
        if want is not None:
            got = choice(prediction)
            return got is not None and got == want
    return _same(clean(prediction), clean(reference), depth=0)


def _same(prediction: str, reference: str, depth: int) -> bool:
    prediction, reference = _lhs_dropped(prediction, reference)
    if not canonical(prediction) or not canonical(reference):
        return False
    want = quantity(reference)
    if want is not None:
        got = quantity(prediction)
        return got is not None and same_quantity(got, want)
    items_r = _items(reference)
    if items_r is not None and depth < 3:
        items_p = _items(prediction)
        brackets = lambda text: text[0] + text[-1] if text[:1] + text[-1:] in ("()", "[]") else ""  # noqa: E731
        if items_p is None or len(items_p) != len(items_r) or brackets(prediction) != brackets(reference):
            return False
        return all(_same(clean(p), clean(r), depth + 1) for p, r in zip(items_p, items_r))
    return canonical(prediction) == canonical(reference)
