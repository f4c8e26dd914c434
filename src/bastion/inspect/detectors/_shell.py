"""A bounded, linear-time reading of text as POSIX shell (plus ``cmd.exe`` carets).

:func:`scan_shell` splits a value into simple commands the way ``sh`` would: separators
(``;`` ``&`` ``&&`` ``|`` ``||`` newline), substitutions (``$(…)``, backticks, ``<(…)``,
``>(…)``), redirections, quotes and escapes. It resolves the tricks attackers use to hide a
command word from pattern matching — quote splitting (``c'a't``), escaped letters (``c\\at``),
empty expansions (``c$@at``, ``cat$u``), ``${x:-cat}`` defaults, ``${IFS}``, brace expansion
(``{cat,/etc/passwd}``), ``^`` carets — and records that it did, because benign text never
needs them. Nothing is executed and unknown variables expand to nothing.

Every character is visited a bounded number of times (a brace or ``${…}`` body at most twice),
and the number of commands, words and word variants and the length of a word are capped. Text
read again as a script of its own (a quoted string, a substitution inside double quotes, a
brace alternative) draws on one budget per value, about the value's own length, so the total
work stays linear in the value's size however the quotes and braces are arranged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Command", "ShellScan", "Word", "glob_matches", "glob_units", "scan_shell"]

_MAX_COMMANDS = 1024
_MAX_WORDS = 64
_MAX_WORD = 256
_MAX_VARIANTS = 8
_MAX_DEPTH = 16
_BRACE_SPAN = 256
# Characters a nested scan may read, beyond the value's own length, and what starting one costs
# in characters (so that thousands of tiny quoted strings cannot each pay a scanner's set-up).
_SUBSCAN_SLACK = 2048
_SUBSCAN_COST = 32
# A run of characters the main loop has no rule for: appended to the word in one step. The
# stdlib engine is safe here: one negated character class, so each character is read once.
# Inside double quotes, the characters with no rule there (all but '"', "\\", "$" and "`").
_DOUBLE_QUOTED_RUN = re.compile(r'[^"\\$`]+')
_ORDINARY_RUN = re.compile(r"[^ \t\v\f;\n\r&|`(){}<>\\'\"$#^?*\[]+")
# Characters the main loop has a rule for, besides blanks, and "=" (assignments): text without
# any of them is plain words (UTF-8 continuation bytes are never ASCII, so the test holds for any
# text).
_SPECIAL_BYTES = b";\n\r&|`(){}<>\\'\"$#^?*[="
_BLANKS_AS_SPACE = str.maketrans("\t\v\f", "   ")
_SPECIAL_PARAMETERS = frozenset("@*#?!$-_0123456789")
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_SHELL_VARIABLES = {"shell": "/bin/sh", "bash": "/bin/bash"}


@dataclass(slots=True)
class Word:
    """One word after quote removal and expansion."""

    text: str
    obfuscated: bool = False
    """Quote splitting, escaped letters, empty expansions or carets inside the word."""
    glob: bool = False
    """Unquoted ``?``, ``*`` or ``[`` (a wildcard the shell would expand)."""
    quoted: bool = False
    """The whole word was one quoted string."""
    dynamic: bool = False
    """The word came from a variable or substitution the scan could not resolve."""


@dataclass(slots=True)
class Command:
    """One simple command: its words and how it was reached."""

    intro: str
    """``start`` (beginning of the value), ``separator``, ``ampersand`` (a single ``&``),
    ``substitution``, ``process`` (``<(…)``) or ``text`` (after a parenthesis that was not in
    command position)."""
    words: list[Word] = field(default_factory=list)
    redirected: bool = False


@dataclass(slots=True)
class ShellScan:
    """Everything :func:`scan_shell` found in one value."""

    commands: list[Command] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    """Variables and aliases assigned in the value (``a=curl``, ``alias a=curl``)."""
    ifs: bool = False
    """``$IFS`` or ``${IFS}`` used as a space."""
    substitutions: bool = False
    """``$(…)``, backticks, ``<(…)`` or ``$[…]`` with something inside."""
    parameter_tricks: bool = False
    """``${…}`` with operators (``${x:-y}``, ``${PATH#…}``, ``${x/…}``)."""
    arithmetic: bool = False
    """``$[…]`` or ``$((…))`` arithmetic expansion."""


class _Lexer:
    __slots__ = (
        "brace_group",
        "brace_scanned",
        "budget",
        "chunk",
        "chunk_size",
        "command",
        "depth",
        "index",
        "quote_parts",
        "scan",
        "stack",
        "text",
        "unquoted",
        "variants",
        "word_flags",
    )

    def __init__(self, text: str, budget: list[int]) -> None:
        self.text = text
        # Characters that nested scans of this value may still read (shared by all of them).
        self.budget = budget
        self.index = 0
        self.scan = ShellScan()
        self.command = Command("start")
        self.stack: list[tuple[str, Command, list[str], list[str], dict[str, bool], int, int]] = []
        self.depth = 0
        self.brace_group = False
        # Where the last unclosed brace search ended: a brace before it cannot close either,
        # so "{a,{a,{a,…" is not searched again and again.
        self.brace_scanned = 0
        self._reset_word()

    def _reset_word(self) -> None:
        self.chunk: list[str] = []
        self.chunk_size = 0
        self.variants: list[str] = [""]
        self.word_flags: dict[str, bool] = {}
        self.quote_parts = 0
        self.unquoted = 0

    # -- word building -------------------------------------------------------------------

    def append(self, char: str, quoted: bool = False) -> None:
        if self.chunk_size < _MAX_WORD:
            self.chunk.append(char)
            self.chunk_size += 1
        if not quoted:
            self.unquoted += 1

    def append_run(self, run: str) -> None:
        """Append unquoted ordinary characters in one step (the common case in prose)."""
        room = _MAX_WORD - self.chunk_size
        if room > 0:
            piece = run[:room]
            self.chunk.append(piece)
            self.chunk_size += len(piece)
        self.unquoted += len(run)

    def append_quoted(self, run: str) -> None:
        """Append quoted characters in one step (``append(char, quoted=True)`` for each)."""
        room = _MAX_WORD - self.chunk_size
        if run and room > 0:
            piece = run[:room]
            self.chunk.append(piece)
            self.chunk_size += len(piece)

    def flag(self, name: str) -> None:
        self.word_flags[name] = True

    def _flush_chunk(self) -> None:
        if self.chunk:
            piece = "".join(self.chunk)
            # Capped: "{a,b}{a,b}…" must not grow every variant by the whole value (quadratic).
            self.variants = [(variant + piece)[:_MAX_WORD] for variant in self.variants]
            self.chunk = []
            self.chunk_size = 0

    def end_word(self) -> None:
        self._flush_chunk()
        flags = self.word_flags
        variants = self.variants
        if not flags and not self.quote_parts and len(variants) == 1:
            # The common case: one plain word, unquoted and unflagged.
            text = variants[0]
            if text and "=" not in text:
                words = self.command.words
                if len(words) < _MAX_WORDS:
                    words.append(Word(text))
                self._reset_word()
                return
        texts = [variant for variant in self.variants if variant]
        had_quotes = self.quote_parts > 0
        if not texts and not had_quotes:
            self._reset_word()
            return
        obfuscated = (
            flags.get("obfuscated", False)
            or flags.get("brace", False)
            or (had_quotes and (self.unquoted > 0 or self.quote_parts > 1))
        )
        quoted = had_quotes and self.unquoted == 0 and self.quote_parts == 1
        command = self.command
        for text in texts or [""]:
            name, equals, value = text.partition("=")
            if (
                equals
                and not quoted
                and name
                and name[0] in _NAME_START
                and all(char in _NAME_CHARS for char in name)
                and (not command.words or command.words[0].text == "alias")
            ):
                # An assignment (or alias): later ``$name`` / ``name`` expands to the value.
                if len(self.scan.aliases) < 64:
                    self.scan.aliases[name] = value
                if not command.words:
                    continue
            if len(command.words) < _MAX_WORDS:
                command.words.append(
                    Word(
                        text,
                        obfuscated=obfuscated,
                        glob=flags.get("glob", False),
                        quoted=quoted,
                        dynamic=flags.get("dynamic", False) and not text,
                    )
                )
        self._reset_word()

    def end_command(self, intro: str) -> None:
        command = self.command
        if not command.words and not self.chunk and self.variants == [""] and not self.quote_parts:
            # Nothing to record (";;;", "a||b"'s empty side): reuse the empty command.
            command.intro = intro
            command.redirected = False
            if self.word_flags:
                self.word_flags = {}
            self.unquoted = 0
            return
        self.end_word()
        if self.command.words and len(self.scan.commands) < _MAX_COMMANDS:
            self.scan.commands.append(self.command)
        self.command = Command(intro)

    # -- nesting ------------------------------------------------------------------------

    def push(self, closer: str, intro: str) -> None:
        """Enter a substitution or group: the outer word waits until it closes."""
        if self.depth >= _MAX_DEPTH:
            return
        self._flush_chunk()
        self.stack.append(
            (
                closer,
                self.command,
                self.variants,
                [],
                self.word_flags,
                self.quote_parts,
                self.unquoted,
            )
        )
        self.depth += 1
        self.command = Command(intro)
        self.chunk = []
        self.chunk_size = 0
        self.variants = [""]
        self.word_flags = {}
        self.quote_parts = 0
        self.unquoted = 0

    def pop(self) -> None:
        """Leave a substitution: its output is unknown, so the outer word continues as is."""
        self.end_command("separator")
        closer, command, variants, _, flags, quote_parts, unquoted = self.stack.pop()
        self.depth -= 1
        self.command = command
        self.variants = variants
        self.chunk = []
        self.chunk_size = 0
        self.word_flags = flags
        self.quote_parts = quote_parts
        self.unquoted = unquoted
        del closer
        if "".join(variants) or unquoted:
            self.flag("obfuscated")
        else:
            self.flag("dynamic")

    # -- the main loop -------------------------------------------------------------------

    def run(self) -> ShellScan:
        text = self.text
        size = len(text)
        scan = self.scan
        while self.index < size:
            if len(scan.commands) >= _MAX_COMMANDS:
                # Nothing past the command cap would be classified: only the value-wide
                # signals are still looked for, with substring tests instead of a full read.
                self._rest_signals(text[self.index :])
                break
            char = text[self.index]
            self.index += 1
            if char in " \t\v\f":
                self.end_word()
            elif char in ";\n\r":
                self.end_command("separator")
            elif char in "&|":
                if char == "&" and self.chunk and self.chunk[-1][-1] in "<>":
                    self.append(char)
                    continue
                if self.index < size and text[self.index] in "&|":
                    self.index += 1
                    self.end_command("separator")
                else:
                    # A single & is common in text ("Tom & Jerry", "a=1&b=2"): weaker.
                    self.end_command("ampersand" if char == "&" else "separator")
            elif char == "`":
                if self.stack and self.stack[-1][0] == "`":
                    self.pop()
                else:
                    self.scan.substitutions = True
                    self.push("`", "substitution")
            elif char == "(":
                self._open_paren()
            elif char == ")":
                if self.stack and self.stack[-1][0] == ")":
                    self.pop()
                else:
                    self.end_command("text")
            elif char == "{":
                self._brace()
            elif char == "}":
                self.end_command("separator" if self.brace_group else "text")
                self.brace_group = False
            elif char in "<>":
                self._redirect(char)
            elif char == "\\":
                self._escape()
            elif char == "'":
                self._single_quote()
            elif char == '"':
                self._double_quote()
            elif char == "$":
                self._dollar(in_quotes=False)
            elif char == "#" and self._at_word_start():
                # A comment: the shell ignores the rest of the line.
                end = text.find("\n", self.index)
                self.index = size if end < 0 else end
            elif char == "^":
                # cmd.exe escape character: w^h^o^a^m^i runs whoami.
                if self.chunk or self.variants != [""]:
                    self.flag("obfuscated")
            elif char in "?*[":
                self.flag("glob")
                self.append(char)
            else:
                run = _ORDINARY_RUN.match(text, self.index - 1)
                if run is None:  # "#" inside a word
                    self.append(char)
                else:
                    self.append_run(run.group())
                    self.index = run.end()
        while self.stack:
            self.pop()
        self.end_command("separator")
        return self.scan

    def _rest_signals(self, rest: str) -> None:
        scan = self.scan
        scan.ifs |= "$ifs" in rest or "${ifs}" in rest
        scan.arithmetic |= "$((" in rest or "$[" in rest
        scan.substitutions |= "$(" in rest or "`" in rest or "<(" in rest or ">(" in rest
        scan.parameter_tricks |= "${" in rest and any(op in rest for op in (":-", ":=", "#", "%"))

    def _at_word_start(self) -> bool:
        return not self.chunk and self.variants == [""] and self.quote_parts == 0

    def _at_command_position(self) -> bool:
        return not self.chunk and self.variants == [""] and not self.command.words

    def _open_paren(self) -> None:
        if self._at_command_position():
            self.push(")", "separator")
        else:
            # f(), ping(x: a parenthesis inside text; what follows is only weakly positioned.
            self.end_command("text")
            self.push(")", "text")

    def _redirect(self, char: str) -> None:
        text = self.text
        if self.index < len(text) and text[self.index] == "(":
            # Process substitution <(cmd) / >(cmd).
            self.index += 1
            self.scan.substitutions = True
            self.push(")", "process")
            return
        self._flush_chunk()
        word = "".join(self.variants)
        if word.isdigit():
            # An fd number (2>&1): not an argument.
            self.variants = [""]
        self.end_word()
        while self.index < len(text) and text[self.index] in "<>&":
            self.index += 1
        while self.index < len(text) and text[self.index].isdigit() and text[self.index - 1] == "&":
            self.index += 1
        self.command.redirected = True
        del char

    def _escape(self) -> None:
        text = self.text
        if self.index >= len(text):
            return
        nxt = text[self.index]
        self.index += 1
        if nxt == "\n":
            return
        if nxt.isalnum():
            # An escaped letter means nothing to the shell: only a disguise needs it.
            self.flag("obfuscated")
        self.append(nxt, quoted=True)

    def _single_quote(self) -> None:
        text = self.text
        end = text.find("'", self.index)
        if end < 0:
            self._unbalanced_quote()
            return
        body = text[self.index : end]
        self.append_quoted(body)
        self.index = end + 1
        self.quote_parts += 1
        self._scan_quoted(body)

    def _unbalanced_quote(self) -> None:
        """A quote that never closes is how an injection leaves the application's own quoted
        string: what follows it is read as shell, as a new command."""
        self.end_command("separator")

    def _scan_quoted(self, body: str) -> None:
        """A quoted string handed to ``system('…')`` or ``sh -c "…"`` is a script of its own."""
        if len(body) > 2 and any(char in body for char in ";|&\n`"):
            inner = self._subscan(body)
            if inner is not None:
                self._merge(inner)

    def _subscan(self, text: str) -> ShellScan | None:
        """``text`` read as a script of its own, or None once the value's budget is spent."""
        cost = len(text) + _SUBSCAN_COST
        if self.budget[0] < cost:
            return None
        self.budget[0] -= cost
        return _scan(text, self.depth + 1, self.budget)

    def _double_quote(self) -> None:
        text = self.text
        size = len(text)
        close = self.index
        while True:
            close = text.find('"', close)
            if close < 0:
                self._unbalanced_quote()
                return
            if text[close - 1] != "\\":
                break
            close += 1
        self._scan_quoted(text[self.index : close])
        self.quote_parts += 1
        while self.index < size:
            run = _DOUBLE_QUOTED_RUN.match(text, self.index)
            if run is not None:
                self.append_quoted(run.group())
                self.index = run.end()
                continue
            char = text[self.index]
            self.index += 1
            if char == '"':
                return
            if char == "\\" and self.index < size and text[self.index] in '"\\$`':
                self.append(text[self.index], quoted=True)
                self.index += 1
            elif char == "$":
                self._dollar(in_quotes=True)
            elif char == "`":
                # A substitution inside double quotes: read it up to its closing backtick.
                end = text.find("`", self.index)
                if end < 0:
                    end = size
                self.scan.substitutions = True
                inner = self._subscan(text[self.index : end])
                if inner is not None:
                    self._merge(inner, "substitution")
                self.index = end + 1
                self.flag("obfuscated")
            else:
                self.append(char, quoted=True)

    def _merge(self, inner: ShellScan, intro: str = "") -> None:
        for command in inner.commands:
            if len(self.scan.commands) < _MAX_COMMANDS:
                if intro and command.intro == "start":
                    command.intro = intro
                self.scan.commands.append(command)
        self.scan.ifs |= inner.ifs
        self.scan.parameter_tricks |= inner.parameter_tricks
        self.scan.arithmetic |= inner.arithmetic

    def _dollar(self, in_quotes: bool) -> None:
        text = self.text
        size = len(text)
        nxt = text[self.index] if self.index < size else ""
        if nxt == "(":
            self.index += 1
            self.scan.substitutions = True
            if text.startswith("(", self.index):
                self.scan.arithmetic = True
            if in_quotes:
                end = _closing(text, self.index - 1, "(", ")")
                inner = self._subscan(text[self.index : end])
                if inner is not None:
                    self._merge(inner, "substitution")
                self.index = end + 1
                self.flag("obfuscated")
            else:
                self.push(")", "substitution")
        elif nxt == "[":
            # $[2+2]: arithmetic, only a disguise in a request value.
            end = text.find("]", self.index)
            self.index = size if end < 0 else end + 1
            self.scan.arithmetic = True
            self.flag("obfuscated")
        elif nxt == "{":
            self._parameter()
        elif nxt == "'" and not in_quotes:
            self.index += 1
            self._single_quote()
        elif nxt == '"' and not in_quotes:
            self.index += 1
            self._double_quote()
        elif nxt and nxt in _SPECIAL_PARAMETERS:
            self.index += 1
            self.flag("obfuscated")
        elif nxt and nxt in _NAME_START:
            start = self.index
            while self.index < size and text[self.index] in _NAME_CHARS:
                self.index += 1
            self._expand(text[start : self.index], in_quotes)
        else:
            self.append("$", quoted=in_quotes)

    def _parameter(self) -> None:
        """``${…}``: IFS, defaults (``${x:-cat}``), known variables, or nothing."""
        text = self.text
        end = _closing(text, self.index, "{", "}")
        body = text[self.index + 1 : end]
        self.index = end + 1
        name_end = 0
        while name_end < len(body) and body[name_end] in _NAME_CHARS:
            name_end += 1
        name, rest = body[:name_end], body[name_end:]
        if rest:
            self.scan.parameter_tricks = True
            operator = rest[:2] if rest[:1] == ":" else rest[:1]
            if operator in (":-", "-", ":=", "=") and name not in self.scan.aliases:
                # ${x:-cat}: an unset variable's default is the text itself.
                for char in rest[len(operator) :]:
                    if char not in "'\"":
                        self.append(char, quoted=True)
                self.flag("obfuscated")
                return
            if rest[:1] == "`":
                inner = self._subscan(rest.strip("`"))
                if inner is not None:
                    self._merge(inner, "substitution")
                self.scan.substitutions = True
        self._expand(name, in_quotes=False)

    def _expand(self, name: str, in_quotes: bool) -> None:
        if name == "ifs":
            self.scan.ifs = True
            if not in_quotes:
                self.end_word()
            return
        value = self.scan.aliases.get(name)
        if value is None:
            value = _SHELL_VARIABLES.get(name)
        if value is None:
            # Unset: expands to nothing, which only a disguise inside a word needs.
            if self.chunk or self.variants != [""]:
                self.flag("obfuscated")
            else:
                self.flag("dynamic")
            return
        if self.chunk or self.variants != [""]:
            self.flag("obfuscated")
        if any(char in value for char in "?*["):
            self.flag("glob")
        for char in value[:_MAX_WORD]:
            if char in " \t" and not in_quotes:
                self.end_word()
            else:
                self.append(char, quoted=True)

    def _brace(self) -> None:
        """``{a,b}`` expands to several words; ``{ cmd; }`` is a group."""
        text = self.text
        if self.index < len(text) and text[self.index] in " \t\n" and self._at_command_position():
            self.brace_group = True
            self.end_command("separator")
            return
        if self.index < self.brace_scanned:
            self.append("{")
            return
        end = _closing(text, self.index - 1, "{", "}", span=_BRACE_SPAN)
        body = text[self.index : end]
        if end >= len(text):
            self.brace_scanned = self.index + _BRACE_SPAN
        if end >= len(text) or "," not in body or any(char in body for char in " \t\n"):
            self.append("{")
            return
        alternatives: list[str] = []
        for part in _split_top_level(body):
            inner = self._subscan(part)
            if inner is None:
                alternatives.append(part)
                continue
            words = [word for command in inner.commands for word in command.words]
            if any(word.glob for word in words):
                self.flag("glob")
            alternatives.append("".join(word.text for word in words))
        self._flush_chunk()
        expanded = [
            (variant + alternative)[:_MAX_WORD]
            for variant in self.variants
            for alternative in alternatives
        ]
        self.variants = expanded[:_MAX_VARIANTS] or [""]
        self.index = end + 1
        self.flag("brace")


def _closing(text: str, start: int, opener: str, closer: str, span: int = 1024) -> int:
    """Index of the bracket closing the one at ``start`` (bounded), or ``len(text)``."""
    depth = 0
    limit = min(len(text), start + span)
    for index in range(start, limit):
        char = text[index]
        if char == opener:
            depth += 1
        elif char == closer:
            depth -= 1
            if depth == 0:
                return index
    return len(text)


def _split_top_level(body: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(body):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(body[start:index])
            start = index + 1
    parts.append(body[start:])
    return parts


def scan_shell(text: str) -> ShellScan:
    """Read ``text`` (already lower-cased) as shell input; see the module docstring."""
    # "surrogatepass": a lone surrogate (from a lenient decoding) is three non-ASCII bytes.
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded.translate(None, _SPECIAL_BYTES)) == len(encoded):
        return _plain_words(text)
    return _scan(text, 0, [len(text) + _SUBSCAN_SLACK])


def _plain_words(text: str) -> ShellScan:
    """What the lexer makes of text without a special character (no separator, quote, escape,
    expansion, bracket, redirection, comment, wildcard nor ``=``): one command of the words
    between blanks, each cut as the lexer cuts it."""
    scan = ShellScan()
    words = [word for word in text.translate(_BLANKS_AS_SPACE).split(" ") if word]
    if words:
        command = Command("start", [Word(word[:_MAX_WORD]) for word in words[:_MAX_WORDS]])
        scan.commands.append(command)
    return scan


def _scan(text: str, depth: int, budget: list[int]) -> ShellScan:
    lexer = _Lexer(text, budget)
    lexer.depth = depth
    if depth >= _MAX_DEPTH:
        return lexer.scan
    return lexer.run()


def glob_matches(pattern: str, name: str) -> bool:
    """Whether shell wildcard ``pattern`` (``?``, ``*``, ``[...]``, ``[!...]``) matches ``name``.

    Iterative with one backtrack point per ``*`` (the classic two-pointer algorithm), so the cost
    is at most ``len(pattern) * len(name)``; callers pass short names.
    """
    p = n = 0
    star_p = star_n = -1
    plen, nlen = len(pattern), len(name)
    while n < nlen:
        if p < plen:
            char = pattern[p]
            if char == "*":
                star_p, star_n = p, n
                p += 1
                continue
            if char == "[":
                end = pattern.find("]", p + 2)
                if end > 0:
                    if _class_matches(pattern[p + 1 : end], name[n]):
                        p, n = end + 1, n + 1
                        continue
                elif name[n] == "[":
                    p, n = p + 1, n + 1
                    continue
            elif char == "?" or char == name[n]:
                p, n = p + 1, n + 1
                continue
        if star_p >= 0:
            star_n += 1
            p, n = star_p + 1, star_n
            continue
        return False
    while p < plen and pattern[p] == "*":
        p += 1
    return p == plen


def glob_units(pattern: str) -> tuple[int, bool]:
    """How many characters of a name the non-``*`` parts of ``pattern`` consume (each literal,
    ``?`` and closed ``[...]`` exactly one, parsed as :func:`glob_matches` does), and whether it
    has a ``*``: a name it matches is exactly that long, or at least that long with a ``*``."""
    units = 0
    star = False
    index = 0
    size = len(pattern)
    while index < size:
        char = pattern[index]
        index += 1
        if char == "*":
            star = True
            continue
        if char == "[":
            end = pattern.find("]", index + 1)
            if end > 0:
                index = end + 1
        units += 1
    return units, star


def _class_matches(spec: str, char: str) -> bool:
    negate = spec[:1] in ("!", "^")
    if negate:
        spec = spec[1:]
    found = False
    index = 0
    while index < len(spec):
        if index + 2 < len(spec) and spec[index + 1] == "-":
            if spec[index] <= char <= spec[index + 2]:
                found = True
            index += 3
        else:
            if spec[index] == char:
                found = True
            index += 1
    return found != negate
