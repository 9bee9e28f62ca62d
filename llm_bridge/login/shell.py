"""The one rule for every value that reaches a rendered script, and for file names given on the command line.

A rendered script is bash, and a value lands in one of four places: a `#SBATCH` line (read by sbatch before
any shell runs), a bash word (bare or inside double quotes), a Hydra override (parsed again by verl), or a
comment. One character set cannot become code in any of them: letters, digits and _ . + @ / : % , = - [ ]
(no space, quote, `$`, backtick, `;`, `&`, `|`, `<`, `>`, `(`, `)`, backslash or line break). A path may also
start with `${HOME}`, which bash expands inside the double quotes every path stands in.

`script_value` is the Jinja environment's finalize hook: every `{{ value }}` of every template passes through
it, so a value outside that set stops the render, whatever the schema let through. Text the renderer builds
itself (macro output, the logger list, a command-line name quoted by `quoted_word`) is `Checked` and passes
as it is.
"""

import re
import shlex

from markupsafe import Markup

# Marks text that is already safe in a script. Markup is Jinja's "do not escape again" type; with the
# renderer's finalize hook it means "checked for a shell script", not HTML.
Checked = Markup

PATH_CHARS = r"A-Za-z0-9_.+@/-"  # what a team.yaml path may hold (also safe unquoted in a Hydra override)
SCRIPT_CHARS = r"A-Za-z0-9_.+@/:%,=\[\]-"  # the ones above and : % , = [ ] ("-" last: not a range)
HOME = "${HOME}"
_SCRIPT_VALUE = re.compile(f"[{SCRIPT_CHARS}]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class UnsafeValue(ValueError):
    """A value that could become code in a script. `value` is the offending text."""

    def __init__(self, value: str, reason: str):
        super().__init__(reason)
        self.value = value


def unsafe_characters(text: str) -> str:
    """The characters of text outside the script set, shown once each ('' when none)."""
    bad = dict.fromkeys(c for c in text if not _SCRIPT_VALUE.fullmatch(c))
    return " ".join(repr(c) for c in bad)


def script_value(value):
    """Finalize hook: numbers and booleans pass; text must be Checked or inside the script set."""
    if value is None or isinstance(value, (bool, int, float, Checked)):
        return value
    text = str(value)
    if _SCRIPT_VALUE.fullmatch(text.removeprefix(HOME)):
        return Checked(text)
    raise UnsafeValue(text, f"has characters that a script could run as code: {unsafe_characters(text.removeprefix(HOME))}")


def script_words(values, separator: str = " ") -> Markup:
    """Jinja's `join`, with each item held to the same rule (the built-in one would HTML-escape them instead)."""
    return Checked(separator.join(str(script_value(v)) for v in values))


def plain_name(text: str, what: str) -> str:
    """A file name from the command line: any printable text, but no line break or other control character
    (in a script's comment a line break starts a command) and nothing that is not UTF-8."""
    if _CONTROL.search(text):
        raise UnsafeValue(text, f"{what} {text!r} has a control character (a line break, tab or the like). "
                                "Fix: rename it with letters, digits and _ . - / only")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeValue(text, f"{what} {text!r} is not valid UTF-8. "
                                "Fix: rename it with letters, digits and _ . - / only") from None
    return text


def quoted_word(text: str) -> Markup:
    """A plain name as one shell word, so that a usage line copied from a script's header works as it is."""
    return Checked(shlex.quote(text))
