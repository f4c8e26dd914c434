"""The SQL injection detector: attacks in many spellings, benign look-alikes, robustness."""

from __future__ import annotations

import time
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Location, Normalized, Severity
from bastion.inspect.detectors.sqli import detect_sqli

QUERY = Location("query", "id")

ATTACKS = [
    pytest.param("1' or '1'='1", id="quote-tautology"),
    pytest.param("admin' or 1=1--", id="login-bypass"),
    pytest.param("admin'--", id="comment-truncation"),
    pytest.param("x' or 'a'='a", id="string-tautology"),
    pytest.param('" or ""="', id="double-quote-tautology"),
    pytest.param("1 or 1=1", id="numeric-tautology"),
    pytest.param("1) or (1=1", id="parenthesised-tautology"),
    pytest.param("1 and 1=2--", id="boolean-false"),
    pytest.param("-1 union select 1,2,3--", id="union-numbers"),
    pytest.param("' union all select username, password from users--", id="union-columns"),
    pytest.param("1 union select null,@@version", id="union-version"),
    pytest.param("'; drop table users--", id="stacked-drop"),
    pytest.param("1; select * from users", id="stacked-select"),
    pytest.param("1'; exec master..xp_cmdshell 'dir'--", id="xp-cmdshell"),
    pytest.param("1 and sleep(5)", id="sleep"),
    pytest.param("' and benchmark(5000000,md5(1))#", id="benchmark"),
    pytest.param("1;select pg_sleep(10)", id="pg-sleep"),
    pytest.param("'; waitfor delay '0:0:5'--", id="waitfor"),
    pytest.param("1 and ascii(substring(user(),1,1))>64", id="blind-ascii"),
    pytest.param("select table_name from information_schema.tables", id="information-schema"),
    pytest.param("x' union select user,password from mysql.user#", id="mysql-user"),
    pytest.param("' union select load_file('/etc/passwd')--", id="load-file"),
    pytest.param("1 into outfile '/var/www/shell.php'", id="into-outfile"),
    pytest.param("select char(97,100,109,105,110)", id="char-building"),
    pytest.param("' and extractvalue(1,concat(0x7e,version()))--", id="extractvalue"),
    pytest.param("1 /*!50000union*/ /*!50000select*/ 1,2", id="versioned-comment"),
    pytest.param("'||(select pg_sleep(5))||'", id="concat-subquery"),
    pytest.param("1' and '1'='1", id="and-tautology"),
]

BENIGN = [
    pytest.param("O'Brien", id="apostrophe-name"),
    pytest.param("D'Angelo-O'Neil", id="two-apostrophes"),
    pytest.param("Please select the union plan for my account", id="prose-select-union"),
    pytest.param("Order 1-2 items; delivery in 3-5 days", id="ranges"),
    pytest.param("ruth.griffiths@hotmail.com", id="email"),
    pytest.param("74273ca3-287d-46ca-af4c-c69a4b22d308", id="uuid"),
    pytest.param("2024-03-01T10:15:00Z", id="iso-date"),
    pytest.param("Use the SELECT button, then drop the file into the box", id="ui-instructions"),
    pytest.param("a<b and c>d", id="comparison-prose"),
    pytest.param("Rock 'n' roll or jazz?", id="quoted-word"),
    pytest.param("It's 5 o'clock -- time for tea", id="dashes"),
    pytest.param("## Summary\n- [x] cleared cache\n**Expected:** a PDF", id="markdown"),
    pytest.param("Issue #123: can't update my profile", id="hash-number"),
    pytest.param("Workers' union meeting at 5", id="union-prose"),
    pytest.param("Insert coin and select a drink from the menu", id="vending"),
    pytest.param("Call me at +1 (555) 010-0199", id="phone"),
    pytest.param("I'd rate it 4 or 5 stars", id="or-numbers"),
    pytest.param("He said 'yes' or 'no'", id="quoted-choices"),
    pytest.param("Sleep well (8 hours at least)", id="sleep-prose"),
    pytest.param("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", id="data-uri"),
]


def _matches(text: str, paranoia: int = 1) -> list[str]:
    return [match.rule for match in detect_sqli(Normalized(text), QUERY, paranoia)]


def _blocks(text: str, paranoia: int = 1) -> bool:
    matches = detect_sqli(Normalized(text), QUERY, paranoia)
    return sum(match.severity for match in matches) >= Severity.CRITICAL


def _evasions(attack: str) -> dict[str, str]:
    """The same attack as an evading client would send it."""
    full_width = "".join(
        chr(ord(char) + 0xFEE0) if "!" <= char <= "~" and char.isalpha() else char
        for char in attack
    )
    return {
        "as-is": attack,
        "upper": attack.upper(),
        "mixed-case": "".join(
            char.upper() if index % 2 else char for index, char in enumerate(attack)
        ),
        "inline-comments": attack.replace(" ", "/**/"),
        "tabs": attack.replace(" ", "%09"),
        "newlines": attack.replace(" ", "%0a"),
        "plus": attack.replace(" ", "+"),
        "url-encoded": urllib.parse.quote(attack, safe=""),
        "double-encoded": urllib.parse.quote(urllib.parse.quote(attack, safe=""), safe=""),
        "full-width": full_width,
    }


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize(
    "evasion",
    [
        "as-is",
        "upper",
        "mixed-case",
        "inline-comments",
        "tabs",
        "newlines",
        "plus",
        "url-encoded",
        "double-encoded",
        "full-width",
    ],
)
def test_attack_blocks_at_paranoia_1(attack: str, evasion: str) -> None:
    assert _blocks(_evasions(attack)[evasion]), _evasions(attack)[evasion]


@pytest.mark.parametrize("text", BENIGN)
def test_benign_is_silent_at_paranoia_1(text: str) -> None:
    assert _matches(text) == []


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        pytest.param("1 union select 1,2", "sqli-union-select", id="union-select"),
        pytest.param("1); drop table users", "sqli-stacked-query", id="stacked-query"),
        pytest.param("1 and sleep(5)", "sqli-time-based", id="time-based"),
        pytest.param("information_schema", "sqli-system-table", id="system-table"),
        pytest.param("load_file('/etc/passwd')", "sqli-file-access", id="file-access"),
        pytest.param("xp_cmdshell", "sqli-mssql-procedure", id="mssql-procedure"),
        pytest.param("char(115)+char(97)", "sqli-string-building", id="string-building"),
        pytest.param("x' or 1=1", "sqli-tautology", id="tautology"),
        pytest.param("x' or 1=1", "sqli-fingerprint", id="fingerprint"),
        pytest.param("group_concat(name)", "sqli-sql-function", id="sql-function"),
    ],
)
def test_rule_ids(text: str, rule: str) -> None:
    assert rule in _matches(text)


def test_match_fields() -> None:
    location = Location("form", "email")
    (match, *_) = detect_sqli(Normalized("x' or 1=1--"), location, 1)
    assert match.category == "sqli"
    assert match.location == location
    assert match.severity == Severity.CRITICAL
    assert match.paranoia == 1


@pytest.mark.parametrize(
    ("text", "rule", "level"),
    [
        pytest.param("1 order by 5--", "sqli-order-by-probe", 2, id="order-by"),
        pytest.param("md5(x)", "sqli-common-function", 2, id="common-function"),
        pytest.param("it' union", "sqli-quote-syntax", 2, id="quote-syntax"),
        pytest.param("select name from users where", "sqli-keyword-density", 3, id="density"),
        pytest.param("abc'--", "sqli-trailing-comment", 3, id="trailing-comment"),
    ],
)
def test_higher_paranoia_rules(text: str, rule: str, level: int) -> None:
    assert rule not in _matches(text, level - 1)
    assert rule in _matches(text, level)
    assert rule in _matches(text, 4)


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        pytest.param("u_id[$ne]", "query_name", True, id="bracket-operator"),
        pytest.param("$where", "json_key", True, id="json-operator"),
        pytest.param("$ne", "query", False, id="operator-as-value"),
        pytest.param("price[$]", "query_name", False, id="dollar-name"),
    ],
)
def test_nosql_operator_keys(name: str, kind: str, expected: bool) -> None:
    matches = detect_sqli(Normalized(name), Location(kind), 1)  # type: ignore[arg-type]
    assert ("sqli-nosql-operator" in [match.rule for match in matches]) is expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_never_raises_and_is_deterministic(text: str) -> None:
    for paranoia in (1, 4):
        first = detect_sqli(Normalized(text), QUERY, paranoia)
        assert detect_sqli(Normalized(text), QUERY, paranoia) == first


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["'", '"', "or", "1", "=", "--", "/*", "*/", " ", "(", ";"])))
def test_sql_alphabet_never_raises(parts: list[str]) -> None:
    text = "".join(parts)
    assert detect_sqli(Normalized(text), QUERY, 4) == detect_sqli(Normalized(text), QUERY, 4)


@pytest.mark.parametrize(
    "adversarial",
    [
        pytest.param("'" * 65536, id="quotes"),
        pytest.param("/*" * 32768, id="comment-openers"),
        pytest.param("\\'" * 32768, id="escaped-quotes"),
        pytest.param("1 or " * 13107, id="logic-chain"),
        pytest.param("(" * 65536, id="parentheses"),
        pytest.param("a" * 65536, id="one-word"),
        pytest.param("' or 1=1 " * 7281, id="repeated-attack"),
        pytest.param("sleep(" * 10922, id="function-openers"),
    ],
)
def test_large_adversarial_input_completes(adversarial: str) -> None:
    started = time.perf_counter()
    result = detect_sqli(Normalized(adversarial), QUERY, 4)
    elapsed = time.perf_counter() - started
    assert isinstance(result, list)
    print(f"{len(adversarial)} chars in {elapsed * 1000:.1f} ms")
