"""SQL injection: a SQL tokenizer with fingerprint grammar, plus targeted patterns.

A value is tokenized three times, as it would be parsed if the application pasted it into a
query bare (numeric context), after an opening ``'`` or after an opening ``"``. In a quote
context the first token is the string the attacker closes. Each token sequence is folded into a
short fingerprint of token classes (``s&1o1c`` is ``' or 1=1--``) and matched against a grammar
of prefixes that only SQL fragments produce, never prose: a value has to *start* by closing a
string or a number and continue with a logic operator, a statement, ``UNION SELECT``… The
targeted patterns catch what needs no context (time-based functions, system tables, file
access, ``xp_cmdshell``). The tokenizer is a hand-written single pass that stops after
:data:`MAX_TOKENS` tokens, and every regular expression is RE2, so the cost is linear in the
size of the value.
"""

from __future__ import annotations

from collections.abc import Callable

import re2

from bastion.inspect.core import Location, Match, Normalized, Severity

__all__ = ["MAX_TOKENS", "detect_sqli"]

MAX_TOKENS = 512
"""Tokens examined per context; an injection reveals itself long before that."""

_FINGERPRINT_LENGTH = 8

# Token classes, one character each so a token sequence is a short string.
_STRING, _NUMBER, _BAREWORD, _VARIABLE = "s", "1", "n", "v"
_KEYWORD, _UNION, _SELECT, _STATEMENT, _ORDER_BY = "k", "U", "E", "T", "B"
_FUNCTION, _OPERATOR, _LOGIC, _COMMENT, _COMPARE = "f", "o", "&", "c", "="
_OPEN, _CLOSE, _SEMICOLON, _COMMA, _DOT = "(", ")", ";", ",", "."
_CLOSED_COMMENT, _BY = "/**/", "by"

_WORDS: dict[str, str] = {}
for _word in ("union", "except", "intersect"):
    _WORDS[_word] = _UNION
_WORDS["select"] = _SELECT
for _word in [
    "drop",
    "insert",
    "delete",
    "update",
    "create",
    "alter",
    "exec",
    "execute",
    "declare",
    "truncate",
    "shutdown",
    "grant",
    "revoke",
    "rename",
    "waitfor",
    "handler",
    "call",
    "merge",
    "replace",
    "load",
    "set",
]:
    _WORDS[_word] = _STATEMENT
for _word in ("and", "or", "xor", "&&", "||"):
    _WORDS[_word] = _LOGIC
for _word in [
    "like",
    "rlike",
    "ilike",
    "regexp",
    "is",
    "in",
    "between",
    "div",
    "mod",
    "sounds",
    "glob",
    "collate",
    "escape",
    "match",
    "against",
    "similar",
    "notnull",
    "isnull",
]:
    _WORDS[_word] = _OPERATOR
for _word in ("null", "true", "false", "unknown", "current_user", "session_user", "sysdate"):
    _WORDS[_word] = _NUMBER
for _word in [
    "from",
    "where",
    "having",
    "limit",
    "offset",
    "into",
    "outfile",
    "dumpfile",
    "values",
    "table",
    "procedure",
    "exists",
    "distinct",
    "all",
    "as",
    "case",
    "when",
    "then",
    "else",
    "end",
    "top",
    "asc",
    "desc",
    "join",
    "on",
    "database",
    "schema",
    "fetch",
    "rows",
    "only",
    "returning",
    "with",
]:
    _WORDS[_word] = _KEYWORD

# Functions whose call is a fingerprint token (``f``); an unknown word before ``(`` stays a
# bareword, so prose such as ``later(ish)`` does not look like a call.
_FUNCTIONS = frozenset(
    [
        "sleep",
        "benchmark",
        "pg_sleep",
        "pg_sleep_for",
        "if",
        "ifnull",
        "nullif",
        "coalesce",
        "iif",
        "ascii",
        "ord",
        "char",
        "chr",
        "nchar",
        "concat",
        "concat_ws",
        "group_concat",
        "string_agg",
        "substr",
        "substring",
        "mid",
        "left",
        "right",
        "length",
        "len",
        "char_length",
        "hex",
        "unhex",
        "bin",
        "md5",
        "sha1",
        "sha2",
        "version",
        "user",
        "database",
        "schema",
        "current_user",
        "system_user",
        "session_user",
        "load_file",
        "extractvalue",
        "updatexml",
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "cast",
        "convert",
        "lower",
        "upper",
        "trim",
        "replace",
        "reverse",
        "instr",
        "locate",
        "position",
        "elt",
        "field",
        "make_set",
        "rand",
        "floor",
        "ceil",
        "round",
        "abs",
        "exp",
        "pow",
        "power",
        "greatest",
        "least",
        "strcmp",
        "soundex",
        "row_number",
        "db_name",
        "user_name",
        "host_name",
        "suser_name",
        "is_srvrolemember",
        "has_dbaccess",
        "object_id",
        "utl_inaddr",
        "utl_http",
        "dbms_pipe",
        "dbms_lock",
        "xmltype",
        "to_char",
        "to_number",
        "randomblob",
        "sqlite_version",
        "json_extract",
        "json_keys",
        "lo_import",
        "lo_get",
        "current_database",
        "pg_read_file",
        "pg_ls_dir",
        "array_to_string",
        "unnest",
        "string_to_array",
        "exists",
        "not",
    ]
)

_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_$")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdef")
_SPACE = frozenset(" \t\n\r\x0b\x0c\xa0")
_OPERATOR_CHARS = frozenset("=<>!+-*/%^|&~")

# Fingerprint prefixes that SQL fragments produce and prose does not. Parentheses are left
# out of fingerprints (``1)) or ((1=1`` folds like ``1 or 1=1``), so one rule covers any
# nesting depth.
_GRAMMAR = re2.compile(
    r"^(?:"
    # ' or 1=1 / ' or 'a'='a / ' or true-- / ' and sleep(5) / '||(select…) / ' or x=x
    r"s&(?:[1v](?:$|[o=;c&,k])|s[o=&;c]|[fEkoU]|n[o=&;c]|n$)"
    # '=' / 'like'%' / 'x'!='y / '-0 or …
    r"|s=[1s]|so[1s](?:[&;c=]|o[1s](?:$|[&;c]))|so[1sn]&|so[fE]"
    # '; drop table… / '; select… / ' union select / '-- / ' order by 3 / ' having 1=1
    r"|s;[TE1c]|s[1n]?UE|sU[k]?E|sc|s;c|sB1|sk[1fv]|sk[n].*c$"
    # numeric context: 1 or 1=1 / 1 and sleep(5) / 1 union select / 1; drop…
    r"|[1n]&(?:1[o=;c&]|[sfv]|E|n=[1sn])|1&1$|1o1&1=1"
    r"|[1n]U[k]?E|[1n];[TE]|1;c|1c$|1B1"
    # a fragment that starts the attacker's own clause: and 1=( / or name = " / ;drop
    r"|&(?:[1n]=|[fE])|;[TE]|f[1sn]=|=E|Tv"
    # a statement as the whole value: select * from… / select @@version / (select 1)
    r"|E(?:[ofv]|[1s](?:$|[,c;&k])|n,|nk[nvs]|k[1sn])"
    r"|U[k]?E(?:[1sofvn]|$)"
    r")"
)

_PATTERNS: tuple[tuple[str, str, int, int], ...] = (
    # name, RE2 over the comment-stripped form, severity, paranoia level
    (
        "union-select",
        r"\bunion\s*(?:all\s*|distinct\s*)?\(*\s*select\b\s*"
        r"(?:[\d'\"@*(`-]|null\b|all\b|distinct\b|top\b|case\b|[\w.$]+\s*(?:,|\(|\bfrom\b|$))",
        Severity.CRITICAL,
        1,
    ),
    (
        "stacked-query",
        r"(?:^|['\"`)\d]\s*);\s*(?:drop\s+(?:table|database|schema|view|user|procedure|function"
        r"|index|trigger)\b|insert\s+into\b|delete\s+from\b|update\s+[\w.`\"\[\]]+\s+set\b"
        r"|truncate\s+table\b|exec(?:ute)?\s+(?:master\b|xp_|sp_|@|\()|declare\s+@|shutdown\b"
        r"|select\b|create\s+(?:table|database|user|procedure|function|trigger|view|login)\b"
        r"|alter\s+(?:table|database|user|login)\b|waitfor\s+(?:delay|time)\b|set\s+@|grant\s)",
        Severity.CRITICAL,
        1,
    ),
    (
        "time-based",
        r"\b(?:sleep\(\s*(?:\d+(?:\.\d+)?\s*\)|[a-z_@(])|benchmark\(\s*\d+\s*,"
        r"|pg_sleep(?:_for|_until)?\s*\(|waitfor\s+(?:delay|time)\s*['\"\d@(]"
        r"|dbms_lock\.sleep\s*\(|dbms_pipe\.receive_message\s*\(|randomblob\(\s*\d{6,})",
        Severity.CRITICAL,
        1,
    ),
    (
        "system-table",
        r"\b(?:information_schema\b|mysql\s*\.\s*(?:user|db|host|innodb_table_stats)\b"
        r"|sys\s*\.\s*(?:objects|tables|columns|databases|sql_logins|syslogins|schemas"
        r"|all_objects|user_objects)\b|sysobjects\b|syscolumns\b|sysdatabases\b"
        r"|master\s*\.\.|sqlite_(?:master|schema|temp_master)\b"
        r"|pg_(?:shadow|catalog|user|authid|stat_activity|namespace)\b"
        r"|(?:all|user|dba)_(?:tables|tab_columns|users|objects)\b)",
        Severity.CRITICAL,
        1,
    ),
    (
        "file-access",
        r"\bload_file\s*\(|\binto\s+(?:out|dump)file\b|\bload\s+data\s+(?:local\s+)?infile\b"
        r"|\b(?:pg_read_file|pg_ls_dir|lo_import|lo_export|utl_file\.\w+)\s*\(",
        Severity.CRITICAL,
        1,
    ),
    (
        "mssql-procedure",
        r"\b(?:xp_(?:cmdshell|dirtree|regread|regwrite|fileexist|servicecontrol|availablemedia"
        r"|subdirs|makecab|ntsec_enumdomains|terminate_process|reg\w+)"
        r"|sp_(?:oacreate|oamethod|executesql|makewebtask|addextendedproc|configure|password"
        r"|addlogin|addsrvrolemember)|openrowset\s*\(|opendatasource\s*\()",
        Severity.CRITICAL,
        1,
    ),
    (
        "string-building",
        r"\b(?:char|chr|nchar)\(\s*\d+\s*\)\s*(?:\+|\|\||,)?\s*(?:char|chr|nchar)\("
        r"|\b(?:char|chr|nchar)\(\s*(?:\d+\s*,\s*){2,}\d+\s*\)"
        r"|\b(?:unhex|concat|concat_ws|char|convert)\(\s*0x[0-9a-f]{2,}"
        r"|\b(?:extractvalue|updatexml)\s*\(",
        Severity.CRITICAL,
        1,
    ),
    (
        "versioned-comment",
        r"/\*!\d*\s*(?:select|union|and|or|from|where|insert|update|delete|drop|sleep|concat)\b",
        Severity.CRITICAL,
        1,
    ),
    (
        "statement",
        r"^\s*(?:alter\s+table\s+\S+\s+(?:add|drop|change|modify|rename)\b"
        r"|drop\s+(?:table|database|schema)\s+\S+|create\s+table\s+\S+\s*\("
        r"|insert\s+into\s+\S+\s*(?:\(|values\b|select\b)|delete\s+from\s+\S+\s*(?:where\b|;|$)"
        r"|update\s+\S+\s+set\s+\S+\s*=|truncate\s+table\s+\S+|execute\s+immediate\b"
        r"|exec(?:ute)?\s+master\s*\.|procedure\s+analyse\s*\(|union\s+(?:all\s+|distinct\s+)?select\s*$"
        r"|select\s+[\w.,*` ()@]{1,80}?\s+from\s+[\w.`\"\[\]]+\s+(?:where|group|order|limit|union"
        r"|join)\b)",
        Severity.CRITICAL,
        1,
    ),
    (
        "order-by-probe",
        r"(?:^|['\"`)\d]\s*)(?:order|group)\s+by\s+\d+\s*(?:$|--|#|/\*|;|,)",
        Severity.CRITICAL,
        2,
    ),
    (
        # Functions that exist only in SQL dialects; ``name(`` without a space, as prose
        # rarely writes it.
        "sql-function",
        r"\b(?:benchmark|sleep|load_file|extractvalue|updatexml|group_concat|concat_ws|make_set"
        r"|name_const|unhex|xmltype|utl_(?:inaddr|http|file)\.\w+|dbms_\w+\.\w+|sqlite_\w+"
        r"|json_build_object|row_to_json|current_user|session_user|system_user|database|db_name"
        r"|schema_name|user_name|suser_s?name|is_srvrolemember|ifnull|isnull|nullif|coalesce"
        r"|strcmp|uncompress|find_in_set|sysdate|lo_get|lo_import|pg_\w+|char_length"
        r"|group_concat|to_char|to_number|string_agg|array_agg|substring_index)\(",
        Severity.CRITICAL,
        1,
    ),
    (
        # Functions SQL shares with programming languages: an attack fragment in a
        # parameter, but also code quoted in a support ticket.
        "common-function",
        r"\b(?:ascii|substring|substr|mid|concat|char|chr|nchar|md5|sha1|sha2|hex|version|ord"
        r"|elt|iif|if|cast|convert|instr|rand|trim|rtrim|ltrim|sin|cos|pow|compress|soundex"
        r"|lower|upper|length|len|count|reverse|decode|encode|schema|user|floor|left|right"
        r"|json_extract|json_keys|unistr|starts_with)\s*\(",
        Severity.CRITICAL,
        2,
    ),
    (
        "trailing-comment",
        r"[\w'\")]\s*(?:--[\s-]*$|#\s*$|/\*)",
        Severity.NOTICE,
        3,
    ),
)

_NOSQL_OPERATOR = re2.compile(
    r"(?:^|\[)\s*\$(?:ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|not|or|and|nor|elemmatch"
    r"|expr|type|size|all|function|accumulator)\s*(?:\]|$)"
)
_NOSQL_KINDS = frozenset(("query_name", "form_name", "json_key", "multipart_name", "cookie_name"))

_COMPILED = tuple(
    (f"sqli-{name}", re2.compile(pattern), severity, level)
    for name, pattern, severity, level in _PATTERNS
)

# One pass rejects most values before the patterns are tried one by one.
_ANY_PATTERN = re2.compile(
    "|".join(f"(?:{pattern})" for _, pattern, _, level in _PATTERNS if level < 3)
)

# Versioned MySQL comments (``/*!50000select*/``) are code, not comments: unwrap them
# before the comment-stripped form is built.
_VERSIONED = re2.compile(r"/\*!\d{0,6}")
_COMMENT_SPAN = re2.compile(r"(?s)/\*.*?(?:\*/|$)|--[^\n]*|#[^\n]*")
_SPACES = re2.compile(r"\s+")
_PREFILTER = re2.compile(r"^[\w.@:+ -]*$")
_STRUCTURE_WORDS = frozenset(
    [
        "select",
        "from",
        "where",
        "union",
        "insert",
        "into",
        "values",
        "update",
        "set",
        "delete",
        "drop",
        "table",
        "order",
        "group",
        "having",
        "limit",
        "join",
        "exec",
        "declare",
    ]
)


def detect_sqli(value: Normalized, location: Location, paranoia: int) -> list[Match]:
    """SQL injection matches of one value for the rules enabled at ``paranoia`` (1-4)."""
    text = value.folded
    if not text:
        return []
    matches: list[Match] = []

    def add(rule: str, severity: int, level: int) -> None:
        if level <= paranoia and all(match.rule != rule for match in matches):
            matches.append(Match(rule, "sqli", severity, location, level))

    # A single word, or words without SQL structure, cannot form a token-level injection;
    # the targeted patterns below still see it (``information_schema``).
    if location.kind in _NOSQL_KINDS and "$" in text and _NOSQL_OPERATOR.search(text):
        # MongoDB query operators smuggled in as a key: ``u_id[$ne]=1``, ``{"$where": …}``.
        add("sqli-nosql-operator", Severity.CRITICAL, 1)
    if not _PREFILTER.match(text) or _has_structure(text):
        for rule, severity, level in _fingerprint_rules(text, paranoia):
            add(rule, severity, level)
    code = _strip_comments(text)
    if _ANY_PATTERN.search(code):
        for rule, pattern, severity, level in _COMPILED:
            if level <= paranoia and level < 3 and pattern.search(code):
                add(rule, severity, level)
    if paranoia >= 3:
        for rule, pattern, severity, level in _COMPILED:
            if level >= 3 and level <= paranoia and pattern.search(text):
                add(rule, severity, level)
    return matches


def _has_structure(text: str) -> bool:
    """A value of words and spaces only is SQL when it holds a statement (``1 union select``)."""
    words = text.split()
    return len(words) > 1 and sum(1 for word in words if word in _STRUCTURE_WORDS) >= 2


def _strip_comments(text: str) -> str:
    if "/*" in text:
        text = str(_VERSIONED.sub(" ", text))
    if "/*" in text or "--" in text or "#" in text:
        text = str(_COMMENT_SPAN.sub(" ", text)).replace("*/", " ")
    return str(_SPACES.sub(" ", text)).strip()


def _fingerprint_rules(text: str, paranoia: int) -> list[tuple[str, int, int]]:
    found: list[tuple[str, int, int]] = []
    contexts: list[str] = [""]
    contexts += [quote for quote in "'\"" if quote in text]
    for quote in contexts:
        tokens = _tokenize(text, quote)
        folded = _fold(tokens)
        fingerprint = "".join(kind for kind, _ in folded[:_FINGERPRINT_LENGTH])
        if _GRAMMAR.search(fingerprint):
            found.append(("sqli-fingerprint", Severity.CRITICAL, 1))
        if _tautology(folded):
            found.append(("sqli-tautology", Severity.CRITICAL, 1))
        if paranoia >= 2 and quote and len(fingerprint) > 1 and fingerprint[1] in "&kUETB;oc":
            # The value closes the string and continues with SQL syntax at once.
            found.append(("sqli-quote-syntax", Severity.WARNING, 2))
        if paranoia >= 3 and not quote:
            words = {token for kind, token in tokens if token in _STRUCTURE_WORDS}
            if len(words) >= 3:
                found.append(("sqli-keyword-density", Severity.WARNING, 3))
    return found


_COMPARISON = frozenset(
    ("=", "==", "===", "<>", "!=", "!==", "<=>", "like", "rlike", "ilike", "regexp", "glob")
).union(("is", "in", ">=", "<=", "<", ">", "between", "sounds"))


def _tautology(tokens: list[tuple[str, str]]) -> bool:
    """``or 1=1``, ``and 'a'='a'``, ``or x like x``: a logic operator before a comparison of
    two literals (or of a name with itself), which no honest value spells out; or a whole
    value that is an always-true comparison (``1=1``, ``42 like 42``, ``2!=1``)."""
    if len(tokens) == 3 and _always_true(*tokens):
        return True
    for index in range(len(tokens) - 3):
        logic, left, operator, right = tokens[index : index + 4]
        if logic[0] != _LOGIC or operator[0] != _COMPARE:
            continue
        if left[0] in "1s" and right[0] in "1s":
            return True
        if left[0] == right[0] == _BAREWORD and left[1] == right[1]:
            return True
    return False


def _always_true(left: tuple[str, str], operator: tuple[str, str], right: tuple[str, str]) -> bool:
    if operator[0] != _COMPARE or left[0] not in "1s" or right[0] not in "1s":
        return False
    if operator[1] in ("!=", "<>", "!=="):
        return left[1] != right[1]
    return operator[1] in ("=", "==", "===", "<=>", "like", "is") and left[1] == right[1]


def _fold(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Fold tokens the way a SQL parser would read them: parentheses dropped, unary signs
    absorbed by their number, adjacent strings concatenated, qualified names merged,
    ``union all`` and ``order by`` as one token."""
    out: list[tuple[str, str]] = []
    for kind, token in tokens:
        if kind in "()" or token == _CLOSED_COMMENT:
            # A closed inline comment is whitespace to the parser (``1/**/or/**/1=1``).
            continue
        previous = out[-1][0] if out else ""
        if (
            kind == _NUMBER
            and previous == _OPERATOR
            and out[-1][1] in ("-", "+", "~", "!")
            and (len(out) < 2 or out[-2][0] not in "1snv")
        ):
            out[-1] = (kind, token)
            continue
        if kind == _OPERATOR and token in ("not", "!") and previous in ("", _LOGIC, _COMPARE):
            continue
        if kind == _STRING and previous == _STRING:
            continue
        if kind == _BAREWORD and previous == _DOT and len(out) > 1 and out[-2][0] == _BAREWORD:
            out.pop()
            continue
        if kind == _DOT and previous == _DOT:
            continue
        if kind == _OPERATOR and token in _COMPARISON:
            kind = _COMPARE
        if token in ("all", "distinct") and previous == _UNION:
            continue
        if token == _BY and previous == _BAREWORD and out[-1][1] in ("order", "group"):
            out[-1] = (_ORDER_BY, "order by")
            continue
        out.append((kind, token))
    return out


def _tokenize(text: str, quote: str) -> list[tuple[str, str]]:
    """SQL tokens of ``text`` as ``(class, text)`` pairs, at most :data:`MAX_TOKENS`.

    With ``quote``, scanning starts inside a string opened by that quote."""
    tokens: list[tuple[str, str]] = []
    size = len(text)
    index = 0
    if quote:
        end = _string_end(text, 0, quote)
        tokens.append((_STRING, text[:end]))
        index = end + 1
    while index < size and len(tokens) < MAX_TOKENS:
        char = text[index]
        if char in _SPACE or char in "{}\\`[]":
            # Braces (ODBC escapes, MySQL ``{x expr}``), backslashes and identifier quotes
            # do not change what the statement does.
            index += 1
            continue
        scanner = _SCANNERS.get(char)
        if scanner is not None:
            index = scanner(text, index, tokens)
        elif char in _WORD_CHARS or char == "@" or not char.isascii():
            index = _scan_word(text, index, tokens)
        else:
            tokens.append(("x", char))
            index += 1
    return tokens


def _string_end(text: str, start: int, quote: str) -> int:
    """Index of the quote closing a string whose content starts at ``start`` (``len(text)``
    when unterminated). Doubled quotes and backslash escapes stay inside the string."""
    index = start
    size = len(text)
    while True:
        end = text.find(quote, index)
        if end < 0:
            return size
        backslashes = 0
        while end - backslashes - 1 >= start and text[end - backslashes - 1] == "\\":
            backslashes += 1
        if backslashes % 2:
            index = end + 1
            continue
        if end + 1 < size and text[end + 1] == quote:
            index = end + 2
            continue
        return end


def _scan_string(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    end = _string_end(text, index + 1, text[index])
    tokens.append((_STRING, text[index + 1 : end]))
    return end + 1


def _scan_slash(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    if text.startswith("/*", index):
        if text.startswith("/*!", index):
            # MySQL runs the content of a versioned comment: skip only the marker.
            index += 3
            while index < len(text) and text[index] in _DIGITS:
                index += 1
            return index
        end = text.find("*/", index + 2)
        if end < 0:
            # Unterminated: it truncates the rest of the query, as ``--`` does.
            tokens.append((_COMMENT, "/*"))
            return len(text)
        tokens.append((_COMMENT, _CLOSED_COMMENT))
        return end + 2
    return _scan_operator(text, index, tokens)


def _scan_dash(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    if text.startswith("--", index):
        return _scan_line_comment(text, index, tokens)
    return _scan_operator(text, index, tokens)


def _scan_line_comment(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    end = text.find("\n", index)
    tokens.append((_COMMENT, text[index : index + 2]))
    return len(text) if end < 0 else end + 1


def _scan_star(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    if text.startswith("*/", index):
        # The end of a versioned comment whose start was skipped.
        return index + 2
    return _scan_operator(text, index, tokens)


def _scan_operator(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    end = index + 1
    while end < len(text) and end - index < 3 and text[end] in _OPERATOR_CHARS:
        if text.startswith("--", end) or text.startswith("/*", end):
            break
        end += 1
    token = text[index:end]
    kind = _LOGIC if token in ("&&", "||") else _OPERATOR
    tokens.append((kind, token))
    return end


def _scan_number(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    size = len(text)
    end = index
    if text.startswith(("0x", "0b"), index):
        end = index + 2
        while end < size and text[end] in _HEX:
            end += 1
    else:
        while end < size and text[end] in _DIGITS:
            end += 1
        if end < size and text[end] == ".":
            end += 1
            while end < size and text[end] in _DIGITS:
                end += 1
        if end < size and text[end] == "e" and end + 1 < size and text[end + 1] in _DIGITS:
            end += 1
            while end < size and text[end] in _DIGITS:
                end += 1
    followed_by_word = end < size and (text[end] in _WORD_CHARS or not text[end].isascii())
    if followed_by_word and "." not in text[index:end] and "e" not in text[index:end]:
        # ``3rd``, ``4c66e0a8``: a word that starts with digits, not a number.
        return _scan_word(text, index, tokens)
    if end == index:
        end = index + 1
    tokens.append((_NUMBER, text[index:end]))
    return end


def _scan_word(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    size = len(text)
    end = index + 1
    while end < size and (text[end] in _WORD_CHARS or text[end] == "@" or not text[end].isascii()):
        if text[end] in _SPACE:
            break
        end += 1
    word = text[index:end]
    if word.startswith("@"):
        tokens.append((_VARIABLE, word))
        return end
    kind = _WORDS.get(word, _BAREWORD)
    if kind == _BAREWORD and word in _FUNCTIONS:
        after = end
        while after < size and text[after] in _SPACE:
            after += 1
        if after < size and text[after] == "(":
            kind = _FUNCTION
    tokens.append((kind, word))
    return end


def _scan_single(kind: str) -> Callable[[str, int, list[tuple[str, str]]], int]:
    def scan(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
        tokens.append((kind, text[index]))
        return index + 1

    return scan


def _scan_dot(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    if index + 1 < len(text) and text[index + 1] in _DIGITS:
        return _scan_number(text, index, tokens)
    tokens.append((_DOT, "."))
    return index + 1


def _scan_hash(text: str, index: int, tokens: list[tuple[str, str]]) -> int:
    return _scan_line_comment(text, index, tokens)


_SCANNERS: dict[str, Callable[[str, int, list[tuple[str, str]]], int]] = {
    "'": _scan_string,
    '"': _scan_string,
    "/": _scan_slash,
    "-": _scan_dash,
    "#": _scan_hash,
    "*": _scan_star,
    "(": _scan_single(_OPEN),
    ")": _scan_single(_CLOSE),
    ";": _scan_single(_SEMICOLON),
    ",": _scan_single(_COMMA),
    ".": _scan_dot,
    **{digit: _scan_number for digit in "0123456789"},
    **{char: _scan_operator for char in "=<>!+%^|&~"},
}
