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

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import re2

from bastion.inspect.core import Finder, Location, Match, Normalized, Severity

__all__ = ["MAX_SCAN_CHARS", "MAX_TOKENS", "detect_sqli"]

MAX_TOKENS = 512
"""Tokens examined per context; an injection reveals itself long before that."""

MAX_SCAN_CHARS = 8192
"""Characters tokenized per context after the string the value may close."""

_FINGERPRINT_LENGTH = 8
_MAX_ESCAPED_QUOTES = 256

# Token classes, one character each so a token sequence is a short string.
_STRING, _NUMBER, _BAREWORD, _VARIABLE = "s", "1", "n", "v"
_KEYWORD, _UNION, _SELECT, _STATEMENT, _ORDER_BY = "k", "U", "E", "T", "B"
_FUNCTION, _OPERATOR, _LOGIC, _COMMENT, _COMPARE = "f", "o", "&", "c", "="
_OPEN, _CLOSE, _SEMICOLON, _COMMA, _DOT = "(", ")", ";", ",", "."
_CLOSED_COMMENT, _BY, _PROSE = "/**/", "by", "w"
_ARTICLES = frozenset("the a an my your our their this that these those his her its".split())  # noqa: SIM905

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
        # SQLite, PostgreSQL and MySQL functions seen in blind and error-based payloads.
        "json",
        "json_valid",
        "json_array",
        "json_object",
        "json_search",
        "jsonb_pretty",
        "likely",
        "unlikely",
        "likelihood",
        "glob",
        "sqlite_compileoption_used",
        "sqlite_compileoption_get",
        "starts_with",
        "unistr",
        "overlay",
        "name_const",
        "polygon",
        "multipoint",
        "linestring",
        "geometrycollection",
        "gtid_subset",
        "st_latfromgeohash",
        "query_to_xml",
        "dblink",
        "current_setting",
        "last_insert_id",
        "found_rows",
        "connection_id",
        "sqrt",
        "now",
    ]
)

_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_$")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdef")
_SPACE = frozenset(" \t\n\r\x0b\x0c\xa0")
_OPERATOR_CHARS = frozenset("=<>!+-*/%^|&~")
# The rest of a word: ``_WORD_CHARS``, ``@`` and any non-ASCII character but a ``_SPACE`` one.
# A single character class repeated, so Python's engine matches it in linear time.
_WORD_REST = re.compile("[a-z0-9_$@\u0080-\u009f\u00a1-\U0010ffff]*")

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
    r"|s;(?:[TE1c]|$)|s[1n]?UE|sU[k]?E|sc|s;c|sB1|sk[1fv]|sk[n].*c$"
    # numeric context: 1 or 1=1 / 1 and sleep(5) / 1 union select / 1; drop…
    r"|[1n]&(?:1[o=;c&]|[sfv]|E|n=[1sn])|1&1$|1o1&1=1"
    r"|[1n]U[k]?E|[1n];[TE]|1;c|1c$|1B1"
    # a fragment that starts the attacker's own clause: and 1=( / or name = " / ;drop
    r"|&(?:[1ns]=|[fE]|[1s]o[1sn])|;[TE]|f[1sn]=|=E|Tv|1&nf"
    # a statement as the whole value: select * from… / select @@version / (select 1)
    r"|E(?:[ofv]|[1s](?:$|[,c;&k]|o[1s])|n,|nk(?:[vs]|n(?:$|[,;c&k=.]))|k[1sn])"
    r"|U[k]?E(?:[1sofvn]|$)"
    r")"
)

# The first two classes of every fingerprint the grammar accepts (it is anchored, and no
# alternative matches fewer than two tokens): a fingerprint starting otherwise is rejected without
# an RE2 call. Kept in step with ``_GRAMMAR`` by a test over every short fingerprint.
_GRAMMAR_SECOND: dict[str, str] = {
    _STRING: "&=o;1nUcBk",
    _NUMBER: "&oU;cB",
    _BAREWORD: "&U;",
    _LOGIC: "1nsfE",
    _SEMICOLON: "TE",
    _FUNCTION: "1sn",
    _COMPARE: "E",
    _STATEMENT: "v",
    _SELECT: "ofv1snk",
    _UNION: "kE",
}


def _may_match_grammar(fingerprint: str) -> bool:
    """Whether ``fingerprint`` starts the way a grammar match must (a necessary condition)."""
    return len(fingerprint) > 1 and fingerprint[1] in _GRAMMAR_SECOND.get(fingerprint[0], "")


@lru_cache(maxsize=4096)
def _grammar_accepts(fingerprint: str) -> bool:
    """Whether the grammar accepts ``fingerprint``. Fingerprints are at most
    ``_FINGERPRINT_LENGTH`` token classes and few of them occur, so each is decided once (an RE2
    call through the Python wrapper costs microseconds, most of it before the match starts)."""
    return _may_match_grammar(fingerprint) and _GRAMMAR.search(fingerprint) is not None


_PATTERNS: tuple[tuple[str, str, int, int], ...] = (
    # name, RE2 over the comment-stripped form, severity, paranoia level
    (
        "union-select",
        r"\bunion\s*(?:all\s*|distinct(?:row)?\s*)?\(*\s*select\b\s*"
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
        r"|pg_sleep(?:_for|_until)?\b|\bselect\s+(?:sleep|benchmark)\b"
        r"|waitfor\s+(?:delay|time)\s*['\"\d@(]"
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
        r"|(?:all|user|dba)_(?:tables|tab_columns|users|objects)\b|\b(?:tempdb|msdb|northwind"
        r"|msys(?:accessobjects|objects|queries|relationships|aces))\b|\bpg_database\b"
        r"|\bsys(?:ibm|cat)\s*\.\s*\w+|\bv\$(?:version|instance|database)\b)"
        r"|@@(?:version|datadir|hostname|basedir|servername|spid|tmpdir|version_compile_os)\b",
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
        r"|addlogin|addsrvrolemember)|openrowset\b|opendatasource\b|msdasql\b|sqloledb\b)",
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
        # Out-of-band exfiltration: DNS or HTTP requests made by the database itself.
        "out-of-band",
        r"\b(?:utl_inaddr|utl_http|utl_tcp|utl_smtp|dbms_ldap|dbms_pipe|dbms_xdbutil"
        r"|dbms_xmlgen|dbms_xmlquery|httpuritype|ctxsys\s*\.\s*drithsx)\b|\bdblink(?:_connect)?\s*\("
        r"|\bcopy\s+[\w.\"]+\s+(?:from|to)\s+program\b|\bload_file\s*\(\s*(?:concat\s*\()?\s*'\\\\",
        Severity.CRITICAL,
        1,
    ),
    (
        # A whole value that is one unclosed call (``abs(``, ``user/?(``): a probe for
        # function injection; text never ends on an opening parenthesis right after a name.
        "function-probe",
        r"^[\s'\"`(]*(?:(?:abs|ascii|avg|benchmark|bin|cast|ceil|ceiling|char|char_length|chr"
        r"|coalesce|compress|concat|concat_ws|convert|cos|count|database|dayname|decode|elt"
        r"|encode|exec|execute|exp|extractvalue|find_in_set|floor|group_concat|hex|ifnull|iif"
        r"|instr|last_insert_id|lcase|length|ln|load_file|locate|log|lower|lpad|ltrim|max|md5"
        r"|mid|min|now|nullif|ord|pi|pow|power|rand|reverse|round|rpad|rtrim|sha1|sha2|sin|sleep"
        r"|soundex|sqrt|strcmp|substr|substring|sum|sysdate|tan|trim|ucase|uncompress|unhex"
        r"|updatexml|upper|version)\W{0,6}"
        # English words: only when glued to the parenthesis or to punctuation before it.
        r"|(?:date|day|default|field|format|hour|if|in|insert|left|local|minute|month|password"
        r"|position|quarter|repeat|replace|right|schema|second|space|time|user|values|week|year)"
        r"(?:[^\w\s]{1,6}\s*)?)\(\s*$",
        Severity.CRITICAL,
        1,
    ),
    (
        # A whole value that is an operator only SQL spells: probing which one passes.
        "operator-probe",
        r"^\s*(?:<=>|>>|<<|\|\||&&|->>?|#>>?|@>|<@|xor|rlike|(?:not\s+)?regexp|sounds\s+like"
        r"|is\s+(?:not\s+)?null|(?:not\s+)?like\s+null|notnull|isnull"
        r"|(?:not\s+)?in\s*\(\s*[-+]?\d+(?:\s*,\s*[-+]?\d+)*[\s,\d]*\)?)\s*$",
        Severity.CRITICAL,
        1,
    ),
    (
        # PostgreSQL: a literal or call cast with ``::`` (error-based ``'a'::int``, JSON
        # operators on a cast literal) and the JSON containment/existence operators.
        "postgres-operator",
        r"(?:['\")]|\b[a-z_]\w*)\s*::\s*(?:jsonb?|int[248]?|integer|bigint|smallint|text"
        r"|varchar|numeric|regclass|regproc|oid|bool(?:ean)?|double\s+precision|bytea|inet)\b"
        r"(?:\s*$|\s*[)=<>|,;+\-*/@?#!~]|\s+(?:and|or|from|limit|order|union|is|between|like)\b)"
        r"|[}\]]'\s*(?:<@|@>|\?[|&]?|@\?|@@|->>?|#>>?)|'\s*->>?\s*'\$"
        r"|'\s*(?:<@|@>|\?[|&]|@\?|@@)\s*'",
        Severity.CRITICAL,
        1,
    ),
    (
        # The tail of a select list or a FROM clause pasted into the value: ``) as x from``,
        # ``from `db`.`t` limit``, ``from(select …``.
        "clause-fragment",
        r"^(?:[)`'\"!;]+\s*as\b\s*[`'\"]?[\w$]*|\d+\s*as\s*[`'\"][\w$]*)[`'\"]?\s*from\b"
        r"|^from\s*(?:\(\s*select\b|`[^`]+`|[\w.]+\s+(?:where\s+[\w.`]+\s*(?:[=<>!]|like\b|in\b)"
        r"|limit\b|(?:group|order)\s+by\b))"
        r"|^\)+\s*(?:like|rlike|regexp|glob|when|then|or|and|xor|union|as|having|limit|where"
        r"|from|(?:order|group)\s+by)\b|^(?:having|where)\s+\d+\s*[=<>]"
        r"|^[\d'\"]{1,32}\)+\s*(?:when|then|like|rlike|regexp|union|having|(?:order|group)\s+by)\b"
        r"|(?:^|[(,='\"\d])\s*case\s+when\b[^;]*?\bthen\b|\bselect\s*\(\s*case\b"
        r"|^\s*create\s+(?:or\s+replace\s+)?(?:function|procedure|trigger)\s+[\w.]+\s*\(",
        Severity.CRITICAL,
        1,
    ),
    (
        # A name, then a quote glued to a SQL operator: ``id'is not-id``, ``x'or'1``,
        # ``user'collate nocase``, ``x'|email``; prose puts a space after a closing quote.
        "quote-operator",
        r"^[\w.@-]{1,64}['\"`](?:is\s*(?:not|null|true|false)|not|like|glob|regexp|rlike|mod|div"
        r"|collate|sounds|notnull|isnull|xor|between|escape|similar)\b|^['\"`](?:collate|notnull|isnull|rlike|regexp"
        r"|xor|sounds)\b|^[\w.@\\-]{0,64}['\"`](?:or|and|xor)['\"(][^\s]"
        r"|^[\w.@-]{1,64}'[-|^&<>=/%*]\s*[a-z_]\w*\s*$"
        r"|^[\w.@-]{0,64}['\"`]\s+(?:is\s+not\s+(?:null|true|false)\b|not\s+(?:like|glob"
        r"|regexp|similar)\b|sounds\s+like\b|collate\s+\w|notnull\b|isnull\b|rlike\b|xor\b)"
        r"|^[^\s'\"`]{1,128}['\"`]\s*;\s*$|^['\"`]\s*;\s*(?:$|[a-z])",
        Severity.CRITICAL,
        1,
    ),
    (
        # Integer-overflow and float-parsing probes, as whole values.
        "overflow-probe",
        r"^\s*(?:2147483648|-2147483649|4294967296|9223372036854775808|-9223372036854775809"
        r"|18446744073709551616|2\.2250738585072011e-308)\s*$",
        Severity.CRITICAL,
        1,
    ),
    (
        # MySQL quirks: ``@v:=`` assignments inside expressions and ``1.e(`` / ``1.e.table``
        # (a number glued to an identifier, which MySQL's parser accepts).
        "mysql-quirk",
        r"(?:^|[\s(,])@[\w.$]*\s*:=|\b\d+\.e(?:\s*\(|\.[a-z_]\w+)",
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
        # A comparison operator alone: a filter value in some APIs, so only a weak signal.
        "comparison-probe",
        r"^\s*(?:=|==|!=|<>|<=|>=|!<|!>|<|>)\s*$",
        Severity.WARNING,
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


# Every pattern below paranoia 3 needs one of these in the comment-stripped text, which has no
# leading space: a character of SQL syntax, an operator, a word a pattern names, or the first
# word of an operator probe (a test checks it against every pattern). Most values have none, and
# the characters are checked with one bytes.translate, the rest by a small automaton: a fraction
# of what the pattern set costs on new text.
_MARK_CHARS = ";()'\"`=<>"
_UNMARKED_BYTES = bytes(range(128)).translate(None, _MARK_CHARS.encode())
_PATTERN_MARKS = Finder(
    r"::|:=|\.e|/\*!|\|\||&&|@@|v\$|#>|@>|<@|->"
    r"|union|select|sleep|benchmark|waitfor|dbms_|randomblob|information_schema|mysql|sys"
    r"|master|sqlite_|pg_|all_|user_|dba_|tempdb|msdb|northwind|load|into|lo_|utl_|xp_|sp_"
    r"|openrowset|opendatasource|msdasql|sqloledb|alter|drop|create|insert|delete|update"
    r"|truncate|exec|procedure|httpuritype|ctxsys|dblink|copy|from|having|where|case|order|group"
    r"|2147483|4294967296|922337203685477580|18446744073709551616|2\.2250738585072011e-308"
)
# The first words of the operator probes, which match the whole value (tested as a prefix: an
# anchored alternative made the automaton above a third slower on new text).
_PROBE_STARTS = ("xor", "rlike", "not", "regexp", "sounds", "is", "like", "notnull", "isnull", "in")


# Searched on its own, and only in text with a quote, which each of its forms starts from: its
# bounded runs at the start of the value (``{1,64}``, ``{1,128}``) multiply the states of the
# set's automaton, which made every search of new text about three times as costly.
_SEPARATE = "quote-operator"
_SEPARATE_INDEX = next(index for index, item in enumerate(_PATTERNS) if item[0] == _SEPARATE)
_SEPARATE_PATTERN = Finder(_PATTERNS[_SEPARATE_INDEX][1])


def _pattern_set() -> tuple[Any, tuple[int, ...]]:
    """The patterns below paranoia 3 but ``_SEPARATE`` as one RE2 set, and the ``_COMPILED``
    index of each."""
    patterns = re2.Set.SearchSet()
    indices: list[int] = []
    for index, (name, pattern, _, level) in enumerate(_PATTERNS):
        if level < 3 and name != _SEPARATE:
            patterns.Add(pattern)
            indices.append(index)
    patterns.Compile()
    return patterns, tuple(indices)


# Which of those patterns match, in one pass instead of one search each. Only for short texts:
# a set's automaton reports no match rather than falling back when it runs out of memory,
# which a short text cannot make it do; longer ones take the pattern-by-pattern path.
_PATTERN_SET, _PATTERN_SET_INDICES = _pattern_set()
_PATTERN_SET_MAX_CHARS = 2048

# Versioned MySQL comments (``/*!50000select*/``) are code, not comments: only their markers
# are removed from the comment-stripped form.
_WORD_TAUTOLOGY = re2.compile(r"^[\w.]+ (?:like|is|rlike|regexp|glob|sounds) [\w.]+$")
_NAME_KINDS = frozenset(("query_name", "form_name", "multipart_name", "cookie_name", "json_key"))
# Attribute values (double- or single-quoted, the last one up to the end of its tag) and text
# nodes. A value holding the quote that delimits it is cut short, but the whole body is still
# inspected as one text too.
_MARKUP_VALUE = re2.compile(r"=\s*\"([^<>]*?)\"\s*/?>|=\s*\"([^\"]*)\"|=\s*'([^']*)'|>([^<>]+)<")
_MAX_SUBJECTS = 16
_MAX_MARKUP_MATCHES = 64
_MAX_COMMENTS = 2048
_MAX_SUBJECT_CHARS = 4096
_MAX_MARKUP_CHARS = 65536
_QUOTE_LOOKALIKES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201b": "'",
        "\u02bc": "'",
        "\u02b9": "'",
        "\u00b4": "'",
        "\u0301": "'",
        "\u2032": "'",
        "\uff07": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2033": '"',
    }
)
# Characters of a value that cannot hold a token-level injection (a test with
# ``bytes.translate``: several times cheaper than an RE2 call through the Python wrapper). RE2's
# ``\w`` is ASCII-only, so these are exactly the characters of ``^[\w.@:+ -]*$``.
_PREFILTER_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@:+ -"
_PLAIN_PATH_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./~-"
# A raw value of only these characters decodes to itself (no ``%``, ``+``, ``&`` or ``\``) and
# is one word (no space): the fingerprint is never taken for it, and only the targeted patterns
# below listing a word of these characters can match.
_TOKEN_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_TOKEN_WORDS = (
    # union-select (``unionselect-1``), system-table (sys*, msys*, tempdb…), mssql-procedure,
    # out-of-band (httpuritype, ctxsys), operator-probe, overflow-probe.
    "union",
    "sys",
    "tempdb",
    "msdb",
    "northwind",
    "openrowset",
    "opendatasource",
    "msdasql",
    "sqloledb",
    "httpuritype",
    "xor",
    "rlike",
    "regexp",
    "notnull",
    "isnull",
    "214748364",
    "4294967296",
    "922337203685477580",
    "18446744073709551616",
)
_TOKEN_UNDERSCORE_WORDS = (
    # time-based (pg_sleep), system-table, mssql-procedure, out-of-band: names with a ``_``.
    "pg_",
    "information_schema",
    "sqlite_",
    "all_",
    "user_",
    "dba_",
    "xp_",
    "sp_",
    "utl_",
    "dbms_",
)
_TOKEN_DOT_WORDS = (
    # system-table (mysql.user, master..), mysql-quirk (1.e.table), overflow-probe (2.2250…).
    "mysql.",
    "master.",
    ".e.",
    "2.2250738585072011e-308",
)
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
    if _inert(value.raw, paranoia):
        return []
    text = value.folded
    if not text:
        return []
    matches: list[Match] = []

    def add(rule: str, severity: int, level: int) -> None:
        if level <= paranoia and all(match.rule != rule for match in matches):
            matches.append(Match(rule, "sqli", severity, location, level))

    if location.kind in _NOSQL_KINDS and "$" in text and _NOSQL_OPERATOR.search(text):
        # MongoDB query operators smuggled in as a key: ``u_id[$ne]=1``, ``{"$where": …}``.
        add("sqli-nosql-operator", Severity.CRITICAL, 1)
    for subject in _subjects(text, location.kind):
        for rule, severity, level in _subject_rules(subject, paranoia):
            add(rule, severity, level)
    return matches


def _inert(raw: str, paranoia: int) -> bool:
    """Whether ``raw`` cannot match any rule, decided without decoding it: one word of letters,
    digits, ``_``, ``.`` and ``-`` (most identifiers, tokens and numbers) that holds none of the
    words the targeted patterns could find in such a value. Anything else (a space, ``+``,
    ``%``, a quote, an operator, a parenthesis…) takes the full path, so ``1 or 1=1``,
    ``admin'--`` and ``union+select`` are never skipped."""
    if not raw.isascii() or raw.encode().translate(None, _TOKEN_BYTES):
        return False
    lowered = raw.lower()
    if paranoia >= 3 and "--" in lowered:
        return False  # trailing-comment (``id--``)
    for word in _TOKEN_WORDS:
        if word in lowered:
            return False
    if "_" in lowered:
        for word in _TOKEN_UNDERSCORE_WORDS:
            if word in lowered:
                return False
    if "." in lowered:
        for word in _TOKEN_DOT_WORDS:
            if word in lowered:
                return False
    return True


def _marked(code: str) -> bool:
    """Whether ``code`` holds one of the marks every pattern below paranoia 3 needs."""
    if code.isascii():
        if code.encode().translate(None, _UNMARKED_BYTES):
            return True  # what is left is one of _MARK_CHARS
    elif any(char in code for char in _MARK_CHARS):
        return True
    return code.startswith(_PROBE_STARTS) or _PATTERN_MARKS.found(code)


def _plain(text: str, allowed: bytes) -> bool:
    """Whether ``text`` is ASCII made of ``allowed`` characters only."""
    return text.isascii() and not text.encode().translate(None, allowed)


def _subject_rules(text: str, paranoia: int) -> list[tuple[str, int, int]]:
    """Rule hits of one piece of text: fingerprints, then the targeted patterns."""
    found: list[tuple[str, int, int]] = []
    if not text.isascii():
        # Typographic quotes and accents stand in for ``'`` in payloads that slip past
        # filters matching the ASCII quote only; a name typed with a typographic apostrophe
        # reads as one written with ``'``, which the grammar already treats as prose.
        text = text.translate(_QUOTE_LOOKALIKES)
    # A single word, or words without SQL structure, cannot form a token-level injection;
    # the targeted patterns below still see it (``information_schema``).
    if not _plain(text, _PREFILTER_BYTES) or _has_structure(text):
        found += _fingerprint_rules(text, paranoia)
    elif text.count(" ") == 2 and _WORD_TAUTOLOGY.match(text):
        # ``42 like 42``, ``1 is 1``: a whole value comparing a literal with itself.
        tokens = _fold(_tokenize(text, ""))
        if len(tokens) == 3 and _always_true(*tokens):
            found.append(("sqli-tautology", Severity.CRITICAL, 1))
    code = _strip_comments(text)
    # Without a mark, none of the patterns below paranoia 3 can match.
    marked = _marked(code)
    if marked and len(code) <= _PATTERN_SET_MAX_CHARS:
        indices = [_PATTERN_SET_INDICES[hit] for hit in _PATTERN_SET.Match(code) or ()]
        if ("'" in code or '"' in code or "`" in code) and _SEPARATE_PATTERN.found(code):
            indices.append(_SEPARATE_INDEX)
        for index in sorted(indices):
            rule, _, severity, level = _COMPILED[index]
            if level <= paranoia:
                found.append((rule, severity, level))
    elif marked and _ANY_PATTERN.search(code):
        for rule, pattern, severity, level in _COMPILED:
            if level <= paranoia and level < 3 and pattern.search(code):
                found.append((rule, severity, level))
    if paranoia >= 3:
        for rule, pattern, severity, level in _COMPILED:
            if level >= 3 and level <= paranoia and pattern.search(text):
                found.append((rule, severity, level))
    return found


def _subjects(text: str, kind: str) -> list[str]:
    """The texts of one value to inspect: the value itself, plus the parts a flat location
    hides. A name holding ``=`` is a whole ``name=value`` pair sent encoded (``pay%3DAND…``),
    so each value in it is inspected alone; an XML body is inspected attribute by attribute
    and node by node; a path segment by segment, so a payload needs not start the path."""
    subjects = [text]
    if kind in _NAME_KINDS:
        if "=" in text:
            for pair in text.split("&", _MAX_SUBJECTS)[:_MAX_SUBJECTS]:
                rest = pair.partition("=")[2].strip()
                if rest:
                    subjects.append(rest)
    elif kind == "body":
        if text.lstrip().startswith("<"):
            subjects += _markup_values(text)
    elif kind == "path" and not _plain(text, _PLAIN_PATH_BYTES):
        segments = [segment for segment in text.split("/") if segment]
        if len(segments) > 1:
            subjects += [
                segment
                for segment in segments[-_MAX_SUBJECTS:]
                if not _plain(segment, _PREFILTER_BYTES) or " " in segment
            ]
    return subjects[: _MAX_SUBJECTS + 1]


def _markup_values(text: str) -> list[str]:
    """Distinct attribute values and text nodes of an XML or HTML document, at most
    :data:`_MAX_SUBJECTS` among the first :data:`_MAX_MARKUP_MATCHES`, each cut to
    :data:`_MAX_SUBJECT_CHARS` characters."""
    values: list[str] = []
    for count, match in enumerate(_MARKUP_VALUE.finditer(text[:_MAX_MARKUP_CHARS])):
        if count >= _MAX_MARKUP_MATCHES:
            break
        piece = next((group for group in match.groups() if group), "").strip()
        if piece and piece not in values:
            values.append(piece[:_MAX_SUBJECT_CHARS])
            if len(values) >= _MAX_SUBJECTS:
                break
    return values


def _has_structure(text: str) -> bool:
    """A value of words and spaces only is SQL when it holds a statement (``1 union select``)."""
    words = text.split()
    return len(words) > 1 and sum(1 for word in words if word in _STRUCTURE_WORDS) >= 2


def _strip_comments(text: str) -> str:
    """``text`` without SQL comments (the content of versioned ``/*!…*/`` comments kept, as
    MySQL runs it) and with whitespace runs as one space. One forward scan: every step moves
    past what it has looked at, so the cost is linear whatever the nesting of markers."""
    if "/*" in text or "--" in text or "#" in text or "*/" in text:
        text = _without_comments(text)
    return " ".join(text.split())


def _without_comments(text: str) -> str:
    out: list[str] = []
    size = len(text)
    # Where each marker next occurs (``size`` when it does not), found again only once the
    # scan has passed it, so each marker is searched for over the text once in all.
    following = {marker: _find(text, marker, 0) for marker in ("/*", "*/", "--", "#")}
    index = 0
    for _ in range(_MAX_COMMENTS):
        for marker, position in following.items():
            if position < index:
                following[marker] = _find(text, marker, index)
        start = min(following.values())
        if start >= size:
            break
        out.append(text[index:start])
        out.append(" ")
        if text.startswith("/*!", start):
            index = start + 3
            while index < size and text[index] in _DIGITS:
                index += 1
        elif text.startswith("/*", start):
            index = _find(text, "*/", start + 2) + 2
        elif text.startswith("*/", start):
            index = start + 2
        else:
            index = _find(text, "\n", start) + 1
        if index >= size:
            return "".join(out)
    else:
        # Thousands of comments in one value: the rest loses its markers only.
        rest = text[index:]
        for marker in ("/*!", "/*", "*/", "--", "#"):
            rest = rest.replace(marker, " ")
        out.append(rest)
        return "".join(out)
    out.append(text[index:])
    return "".join(out)


def _find(text: str, marker: str, start: int) -> int:
    position = text.find(marker, start)
    return len(text) if position < 0 else position


def _fingerprint_rules(text: str, paranoia: int) -> list[tuple[str, int, int]]:
    found: list[tuple[str, int, int]] = []
    contexts: list[tuple[str, bool]] = [("", False)]
    for quote in "'\"":
        if quote in text:
            contexts.append((quote, False))
            if "\\" + quote in text:
                # ``\'or'1``: against an application that escapes ``'`` as ``\'``, the
                # attacker's own backslash escapes the added one and the quote closes.
                contexts.append((quote, True))
    for quote, naive in contexts:
        tokens = _tokenize(text, quote, naive)
        folded = _fold(tokens)
        kinds = [kind for kind, _ in folded]
        fingerprint = "".join(kinds[:_FINGERPRINT_LENGTH])
        if _grammar_accepts(fingerprint) and not _quoted_word(folded):
            found.append(("sqli-fingerprint", Severity.CRITICAL, 1))
        # A tautology needs a logic operator, or is the whole value (three tokens).
        if (_LOGIC in kinds or len(kinds) == 3) and _tautology(folded):
            found.append(("sqli-tautology", Severity.CRITICAL, 1))
        if paranoia >= 2 and quote and len(fingerprint) > 1 and fingerprint[1] in "&kUETB;oc":
            # The value closes the string and continues with SQL syntax at once.
            found.append(("sqli-quote-syntax", Severity.WARNING, 2))
        if paranoia >= 3 and not quote:
            words = {token for kind, token in tokens if token in _STRUCTURE_WORDS}
            if len(words) >= 3:
                found.append(("sqli-keyword-density", Severity.WARNING, 3))
    return found


def _quoted_word(tokens: list[tuple[str, str]]) -> bool:
    """``'like' button``, ``"is" here``: a quoted word operator followed by prose (the next
    string starts with a space), not a comparison with the attacker's own literal."""
    return (
        len(tokens) > 2
        and tokens[0][0] == _STRING
        and tokens[1][0] == _COMPARE
        and tokens[1][1].isalpha()
        and tokens[2][0] == _STRING
        and tokens[2][1][:1].isspace()
    )


_COMPARISON = frozenset(
    ("=", "==", "===", "<>", "!=", "!==", "<=>", "like", "rlike", "ilike", "regexp", "glob")
).union(("is", "in", ">=", "<=", "<", ">", "between", "sounds"))


def _tautology(tokens: list[tuple[str, str]]) -> bool:
    """``or 1=1``, ``and 'a'='a'``, ``or x like x``: a logic operator before a comparison of
    two literals (or of a name with itself), which no honest value spells out; or a whole
    value that is an always-true comparison (``1=1``, ``42 like 42``, ``2!=1``)."""
    if len(tokens) == 3 and _always_true(*tokens):
        return True
    # Only the positions of logic operators are examined (prose has few or none).
    last = len(tokens) - 4
    for index in range(last + 1):
        if tokens[index][0] != _LOGIC:
            continue
        left, operator, right = tokens[index + 1 : index + 4]
        if operator[0] != _COMPARE:
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
        if token in ("all", "distinct", "distinctrow") and previous in (_UNION, _SELECT):
            continue
        if kind == _BAREWORD and token in _ARTICLES and previous == _KEYWORD:
            # ``from the list``: SQL names no table after an article, prose does.
            kind = _PROSE
        if token == _BY and previous == _BAREWORD and out[-1][1] in ("order", "group"):
            out[-1] = (_ORDER_BY, "order by")
            continue
        out.append((kind, token))
    return out


def _tokenize(text: str, quote: str, naive: bool = False) -> list[tuple[str, str]]:
    """SQL tokens of ``text`` as ``(class, text)`` pairs, at most :data:`MAX_TOKENS`.

    With ``quote``, scanning starts inside a string opened by that quote; with ``naive``, that
    string ends at the first such quote even when a backslash precedes it."""
    tokens: list[tuple[str, str]] = []
    size = len(text)
    index = 0
    if quote:
        end = text.find(quote) if naive else _string_end(text, 0, quote)
        tokens.append((_STRING, text[:end]))
        index = end + 1
    # The fingerprint reads the first tokens only: past a window after the opening string, no
    # further text is scanned (the targeted patterns still see the whole value).
    text = text[: index + MAX_SCAN_CHARS]
    size = len(text)
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
    for _ in range(_MAX_ESCAPED_QUOTES):
        end = text.find(quote, index)
        if end < 0:
            return size
        backslashes = 0
        while (
            end - backslashes - 1 >= start
            and backslashes < _MAX_ESCAPED_QUOTES
            and text[end - backslashes - 1] == "\\"
        ):
            backslashes += 1
        if backslashes % 2:
            index = end + 1
            continue
        if end + 1 < size and text[end + 1] == quote:
            index = end + 2
            continue
        return end
    # A string of hundreds of escaped quotes is read as running to the end of the value.
    return size


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
    run = _WORD_REST.match(text, index + 1)
    end = run.end() if run is not None else index + 1
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
