"""The XSS detector: executable contexts in many spellings, and benign text left alone."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Location, Normalized, Severity
from bastion.inspect.detectors.xss import detect_xss

QUERY = Location("query", "q")


def rules(text: str, paranoia: int = 1, location: Location = QUERY) -> set[str]:
    return {match.rule for match in detect_xss(Normalized(text), location, paranoia)}


ATTACKS = [
    ("script", "<script>alert(1)</script>", "xss-script-tag"),
    ("script-case", "<ScRiPt >alert(1)</sCrIpT>", "xss-script-tag"),
    ("script-url-encoded", "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "xss-script-tag"),
    ("script-double-encoded", "%253Cscript%253Ealert(1)", "xss-script-tag"),
    ("script-entities", "&lt;script&gt;alert(1)", "xss-script-tag"),
    ("script-full-width", "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e", "xss-script-tag"),
    ("script-namespaced", '<x:script xmlns:x="http://www.w3.org/1999/xhtml">', "xss-script-tag"),
    ("script-utf7", "+ADw-script+AD4-alert(1)+ADw-/script+AD4-", "xss-script-tag"),
    ("script-high-bit", "\\xbcscript\\xbealert(1)\\xbc/script\\xbe", "xss-script-tag"),
    ("img-onerror-unquoted", "<img src=x onerror=alert(1)>", "xss-event-handler"),
    ("svg-slash-onload", "<svg/onload=alert(1)>", "xss-event-handler"),
    ("handler-newline", "<img\nsrc=x\nonerror\n=alert(1)>", "xss-event-handler"),
    ("handler-unclosed", "<img src=x onerror=alert(1)//", "xss-event-handler"),
    ("handler-quote-breakout", "\" onmouseover='prompt(1)'", "xss-event-handler"),
    ("handler-unknown-in-tag", "<xss onxyzzy=alert(1)>", "xss-tag-handler"),
    ("js-url", '<a href="javascript:alert(1)">x</a>', "xss-script-url"),
    ("js-url-hex-entity", "&#x6a;avascript:alert(1)", "xss-script-url"),
    ("js-url-colon-entity", "javascript&colon;alert(1)", "xss-script-url"),
    ("js-url-tab", "java\tscript:alert(1)", "xss-script-url"),
    ("js-url-newline-entity", "jav&#10;ascript:alert(1)", "xss-script-url"),
    ("js-url-tab-entity-encoded", "ja%26Tab%3Bvascript%3Aalert(1)", "xss-script-url"),
    ("js-url-double-entity", "ja&amp;Tab;vascript:alert(1)", "xss-script-url"),
    ("js-url-leading-control", "\x01javascript:alert(1)", "xss-script-url"),
    ("js-url-full-width", "\uff4aavascript:alert(1)", "xss-script-url"),
    ("vbscript-url", "vbscript:MsgBox(1)", "xss-script-url"),
    ("data-html", "data:text/html;base64,PHNjcmlwdD4=", "xss-data-url"),
    ("data-svg", "DATA:image/svg+xml,<svg onload=alert(1)>", "xss-data-url"),
    ("iframe", "<iframe src=//evil.example>", "xss-embedding-tag"),
    ("object", "<OBJECT data=x.swf>", "xss-embedding-tag"),
    ("embed", '<embed src="deuce.swf">', "xss-embedding-tag"),
    ("base-href", '<base href="//evil.example/">', "xss-base-href"),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=//evil">', "xss-meta-tag"),
    ("srcdoc", '<iframe srcdoc="&lt;img src=x onerror=alert(1)&gt;">', "xss-srcdoc"),
    ("formaction", "<button formaction=javascript:alert(1)>", "xss-formaction"),
    ("style-expression", '<p style="width: expression(alert(1))">', "xss-css-code"),
    ("style-url-js", "<p style=\"background:url('javascript:alert(1)')\">", "xss-css-code"),
    (
        "svg-animate",
        '<svg><animate attributeName="href" values="javascript:alert(1)"/>',
        "xss-svg-animation",
    ),
    ("svg-set", '<svg><set attributeName="onmouseover" to="alert(1)"/>', "xss-svg-animation"),
    ("angular", "{{constructor.constructor('alert(1)')()}}", "xss-template-injection"),
    (
        "angular-entities",
        "&#x7B;&#x7B;constructor.constructor('alert(1)')()&#x7D;&#x7D;",
        "xss-template-injection",
    ),
    ("tagged-template", "[].sort.call`${alert}1337`", "xss-tagged-template"),
    ("global-bracket", 'window["alert"](document["cookie"])', "xss-js-global-access"),
    ("cookie-comment-split", "document /*x*/ . /*y*/ cookie", "xss-js-global-access"),
    ("jsfuck", "(![]+[])[+!+[]]", "xss-jsfuck"),
    ("code-position-call", 'x";setTimeout(name, 1)//', "xss-js-call-code"),
    ("spaced-tag", "<f o r m action=//evil>", "xss-spaced-tag"),
    (
        "xxe",
        '<!DOCTYPE r [<!ENTITY % x SYSTEM "http://evil.example/">%x;]>',
        "xss-xml-external-entity",
    ),
]


@pytest.mark.parametrize(
    ("text", "rule"), [(a, r) for _, a, r in ATTACKS], ids=[i for i, _, _ in ATTACKS]
)
def test_attack_matches_at_paranoia_1(text: str, rule: str) -> None:
    assert rule in rules(text)


BENIGN = [
    ("less-than", "a<b"),
    ("comparison", "x < 3 and y > 2"),
    ("a-lt-b-gt", "a<b and c>d"),
    ("heart", "I <3 this product"),
    ("email", "Bob Smith <bob@example.com>"),
    ("markdown", "**Bold** and _italic_, see [docs](https://example.com/docs) `code`"),
    ("markdown-image", "![](https://cdn.example.com/x.png)"),
    ("bold-tag", "<b>bold</b> and <i>italic</i>"),
    ("paragraph-link", '<p>See <a href="https://example.com">our site</a></p>'),
    ("prose-javascript", "I am learning JavaScript: the good parts"),
    ("prose-alert", "Please set an alert (daily) for price drops"),
    ("prose-online", "online=true&onsale=1"),
    ("prose-expression", "a regular expression (regex) matches"),
    ("math", "f(x) = 2x + 1, where x >= 0 and y <= 5"),
    ("arrow", "Settings -> Profile => Save"),
    ("code-in-prose", "use array.map(fn) and then filter(Boolean)"),
    ("template-placeholder", "Hello {{name}}, your order {{order_id}} shipped"),
    ("json-like", '{"a": [1, 2, 3], "b": {"c": null}}'),
    ("data-image", "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="),
    ("base64-onload-ish", "MIAGCSqGSIb3DQonabcdefgh=HIJAoGBAM"),
]


@pytest.mark.parametrize("text", [t for _, t in BENIGN], ids=[i for i, _ in BENIGN])
def test_benign_text_does_not_match_at_paranoia_1(text: str) -> None:
    assert rules(text) == set()


def test_harmless_markup_matches_only_from_paranoia_3() -> None:
    assert rules("<b>bold</b>", 2) == set()
    assert rules("<b>bold</b>", 3) == {"xss-html-tag"}


def test_script_calls_without_markup_match_from_paranoia_2() -> None:
    text = "please call alert(s) now"
    assert rules(text, 1) == set()
    assert "xss-js-call" in rules(text, 2)


def test_match_carries_location_category_severity_and_level() -> None:
    location = Location("header", "referer")
    (match,) = detect_xss(Normalized("<script>"), location, 1)
    assert (match.rule, match.category, match.severity) == (
        "xss-script-tag",
        "xss",
        Severity.CRITICAL,
    )
    assert (match.location, match.paranoia) == (location, 1)


def test_namespaced_xml_is_normal_in_a_raw_body() -> None:
    xml = '<root xmlns="urn:example:orders"><id>1</id></root>'
    assert "xss-xml-namespace" in rules(xml, 1, Location("form", "doc"))
    assert "xss-xml-namespace" not in rules(xml, 4, Location("body"))


def test_higher_paranoia_never_drops_a_match() -> None:
    text = "<img src=x onerror=alert(1)><b>x</b>"
    found = [rules(text, level) for level in (1, 2, 3, 4)]
    assert all(found[i] <= found[i + 1] for i in range(3))


@pytest.mark.parametrize("text", ["%ed%a0%80<script>", "\\ud83d<script>\\udc00"])
def test_lone_surrogates_do_not_raise(text: str) -> None:
    assert detect_xss(Normalized(text), Location("json", "url"), 4)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from([1, 2, 3, 4]))
def test_never_raises_and_is_deterministic(text: str, paranoia: int) -> None:
    first = detect_xss(Normalized(text), QUERY, paranoia)
    assert first == detect_xss(Normalized(text), QUERY, paranoia)
    assert all(match.paranoia <= paranoia for match in first)


@pytest.mark.parametrize(
    "text",
    [
        "<" * 65536,
        "<a " + "x=" * 32000 + ">",
        "&#x6a;" * 10000,
        "javascript" * 6500,
        "{{" * 32768,
        "%3C" * 21000,
        "\\xbc" * 16000,
    ],
    ids=["angles", "attributes", "entities", "scheme-words", "braces", "percent", "high-bit"],
)
def test_adversarial_64k_input_completes(text: str) -> None:
    started = time.perf_counter()
    detect_xss(Normalized(text), QUERY, 4)
    elapsed = time.perf_counter() - started
    print(f"xss 64 KiB adversarial: {elapsed * 1000:.1f} ms")


def test_utf7_markup_is_decoded_without_a_regex_callback() -> None:
    assert "xss-script-tag" in {
        m.rule for m in detect_xss(Normalized("+ADw-script+AD4-"), Location("query", "q"), 1)
    }


def test_utf7_repetition_scales_linearly() -> None:
    # One substitution callback per "+ADw-" made this the slowest 64 KiB shape.
    from bastion.inspect.detectors.xss import _utf7

    assert _utf7("+adw-" * 16000) == "<" * 16000


@pytest.mark.parametrize("text", ["abc123", "550e8400-e29b-41d4", "hello world", "v1.2_3"])
def test_inert_values_skip_the_rule_set(text: str) -> None:
    from bastion.inspect.detectors.xss import _inert

    assert _inert(text)


@pytest.mark.parametrize(
    "text", ["document.cookie", "window.location", "ADw-script", "a<b", "%3cscript", "\uff1cx"]
)
def test_values_that_may_match_are_not_inert(text: str) -> None:
    from bastion.inspect.detectors.xss import _inert

    assert not _inert(text)
