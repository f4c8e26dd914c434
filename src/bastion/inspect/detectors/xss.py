"""Cross-site scripting: markup, URLs and script that would execute if a value were reflected.

The detector looks for *executable contexts*, not for angle brackets: a ``<script`` or framing
element, an event-handler attribute, a ``javascript:`` URL, a ``srcdoc``, CSS that runs code, a
template expression that escapes the AngularJS sandbox, and JavaScript that only an attacker
writes (bracket access to ``window``, JSFuck, tagged-template calls, ``'-alert(1)-'`` after a
string breakout). Breakouts count too: closing the comment, ``<title>`` or ``<textarea>`` the
value is reflected into (``-->``, ``</title>``), raw-text elements used for mutation XSS
(``<noscript>``), a quote that turns an ``on*`` name into an attribute, a tag left open
(dangling markup) and form controls that act on their own (``autofocus``, ``formaction``).
Harmless markup such as ``<b>bold</b>`` only counts from paranoia level 3, bare script calls
such as ``alert(`` from 2, and an arrow between words (``A --> B``) is prose at every level
below 3.

Every pattern is RE2 (linear time) and runs on the case-folded, entity- and escape-resolved
form of the value, plus up to three cheap re-decodings that attackers rely on: a second round
of HTML entities (``&amp;tab;``), UTF-7 (``+ADw-script+AD4-``) and the US-ASCII high-bit
strip that turns ``\\xbc`` into ``<``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import re2

from bastion.inspect.core import Location, Match, Normalized, Severity

__all__ = ["detect_xss"]

# Browsers drop tab, CR, LF (and old ones NUL) anywhere inside a URL scheme.
_IN_SCHEME = r"[\t\n\r\x00]*"
# Between an element name and its attributes HTML accepts whitespace and "/".
_TAG_GAP = r"[\x00-\x20/]"
# "<", optionally a namespace prefix ("<x:script", "<:vmlframe"), then the element name.
_OPEN = r"<[\x00-\x20]*(?:[a-z0-9_-]{0,20}[\x00-\x20]*:[\x00-\x20]*)?"
_NAME_END = r"(?:$|[^a-z0-9_:-])"
# A JavaScript property path ("foo.bar").
_JS_PATH = r"[a-z_$][a-z0-9_$]*[\x00-\x20]*\.[\x00-\x20]*[a-z_$][a-z0-9_$.]*"
# Whitespace or a /* comment */ between JavaScript tokens.
_JS_GAP = r"(?:[\x00-\x20]|/\*[^*]*\*+(?:[^/*][^*]*\*+)*/)*"


def _spelled(word: str, gap: str) -> str:
    """``word`` with ``gap`` allowed between its letters (``j\\tava\\nscript``)."""
    return gap.join(re2.escape(char) for char in word)


_SCRIPT_SCHEME = (
    "(?:"
    + "|".join(_spelled(s, _IN_SCHEME) for s in ("javascript", "vbscript", "livescript"))
    + ")"
)

# Event names after "on" (onload, onerror, ...): the ones browsers fire on ordinary elements,
# SVG animation and the vendor-prefixed ones used to dodge short lists.
_EVENTS = (
    "abort|activate|afterprint|afterscriptexecute|afterupdate|animation[a-z]*|auxclick|"
    "before[a-z]+|begin|blur|bounce|cancel|canplay[a-z]*|change|click|close|contextmenu|"
    "copy|cuechange|cut|dblclick|drag[a-z]*|drop|durationchange|emptied|end|ended|error|"
    "finish|focus[a-z]*|formdata|fullscreen[a-z]*|gotpointercapture|hashchange|help|input|"
    "invalid|key(?:down|press|up)|load|loadeddata|loadedmetadata|loadend|loadstart|"
    "lostpointercapture|message|mouse[a-z]+|move[a-z]*|mozfullscreen[a-z]*|pagehide|"
    "pagereveal|pageshow|paste|pause|play|playing|pointer[a-z]+|popstate|progress|"
    "propertychange|ratechange|readystatechange|repeat|reset|resize|scroll[a-z]*|search|"
    "seeked|seeking|select[a-z]*|show|start|storage|submit|suspend|timeupdate|toggle|"
    "touch[a-z]+|transition[a-z]+|unload|volumechange|waiting|webkit[a-z]+|wheel|zoom"
)
# A handler needs a boundary a browser accepts before it: start, whitespace, a quote that
# closes the previous attribute, "/" ("<svg/onload="), ";" or "," (CSS/JS breakouts) or a
# digit (tokens glued onto a value). "?", "&" and letters do not count: query strings and
# words such as "sonar=" are not attributes.
_HANDLER_LEFT = r"(?:^|[\x00-\x20\"'`/;,(+0-9\\])"


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    paranoia: int
    severity: int
    pattern: str


def _rule(name: str, paranoia: int, severity: int, pattern: str) -> _Rule:
    return _Rule(f"xss-{name}", paranoia, severity, pattern)


_CRIT = Severity.CRITICAL
_RULES: tuple[_Rule, ...] = (
    # --- paranoia 1: constructs that execute script or load active content ---
    _rule("script-tag", 1, _CRIT, _OPEN + "script" + _NAME_END),
    _rule(
        "embedding-tag",
        1,
        _CRIT,
        _OPEN + r"(?:i?frame|frameset|object|embed|applet|portal|vmlframe|isindex|layer|"
        r"ilayer|bgsound|style|xml)" + _NAME_END,
    ),
    _rule("base-href", 1, _CRIT, _OPEN + "base" + _TAG_GAP + r"[^>]*href"),
    _rule(
        "meta-tag",
        1,
        _CRIT,
        _OPEN + "meta" + _TAG_GAP + r"[^>]*(?:http-equiv|charset|content[\x00-\x20]*=)",
    ),
    _rule("link-tag", 1, _CRIT, _OPEN + "link" + _TAG_GAP + r"[^>]*href"),
    _rule("html-import", 1, _CRIT, r"<[\x00-\x20]*\??[\x00-\x20]*import[\x00-\x20]*implementation"),
    _rule("event-handler", 1, _CRIT, _HANDLER_LEFT + "on(?:" + _EVENTS + r")[\x00-\x20]*="),
    # Any on* attribute inside an element, or right after a quote that ends an attribute.
    _rule(
        "tag-handler",
        1,
        _CRIT,
        r"<[\x00-\x20]*[a-z][a-z0-9:_-]*[\x00-\x20/](?:[^>]*[\x00-\x20/\"'`])?on[a-z]{3,40}"
        r"[\x00-\x20]*=",
    ),
    # A script URL where a URL goes: value start, after "=", a quote, "(" or "url(", or glued
    # to its code ("javascript:alert"). Prose such as "JavaScript: the good parts" is left to
    # the paranoia-2 rule below.
    _rule(
        "script-url",
        1,
        _CRIT,
        r"(?:(?:^|[=(\[,\"'`])[\x00-\x20\"'`]*" + _SCRIPT_SCHEME + _IN_SCHEME + ":"
        r"|(?:^|[^a-z0-9])" + _SCRIPT_SCHEME + _IN_SCHEME + r":[^\x00-\x20])",
    ),
    _rule(
        "data-url",
        1,
        _CRIT,
        r"(?:^|[^a-z0-9])" + _spelled("data", _IN_SCHEME) + r"[\x00-\x20]*:[\x00-\x20]*"
        r"(?:text/(?:x?html|xml|(?:x-)?(?:java|ecma)script)|image/svg\+xml|"
        r"application/(?:xhtml\+xml|xml|(?:x-)?(?:java|ecma)script)|[^,<>\"']{0,80},[\x00-\x20]*<)",
    ),
    _rule("srcdoc", 1, _CRIT, r"(?:^|[^a-z0-9_-])srcdoc[\x00-\x20]*="),
    _rule("formaction", 1, _CRIT, r"(?:^|[^a-z0-9_-])formaction[\x00-\x20]*="),
    _rule(
        "script-language",
        1,
        _CRIT,
        r"language[\x00-\x20]*=[\x00-\x20\"']*(?:j|vb)script|#@~\^",
    ),
    # CSS that runs code: IE expression()/behavior, Mozilla XBL bindings, imports in a style.
    _rule(
        "css-code",
        1,
        _CRIT,
        r"(?:^|[^a-z])style[\x00-\x20]*[=:>][^<>]*(?:expression[\x00-\x20]*\(|"
        r"behavior[\x00-\x20]*:|@import)|-moz-binding[\x00-\x20]*:"
        r"|url[\x00-\x20]*\([\x00-\x20\"']*(?:java|vb)script",
    ),
    _rule(
        "svg-animation",
        1,
        _CRIT,
        _OPEN + r"(?:animate[a-z]*|set|handler|listener)" + _TAG_GAP + r"[^>]*attributename",
    ),
    # AngularJS sandbox escapes and client-side template probes reaching the constructor.
    _rule(
        "template-injection",
        1,
        _CRIT,
        r"\{\{[^}]*(?:constructor|\$eval|\$on\b|\$parse|__proto__|\$event|fromcharcode)"
        # ...or calling a dialog or evaluator, or reaching a global, from inside the braces.
        r"|\{\{(?:[^}]*[^a-z0-9_$}])?(?:(?:alert|prompt|confirm|eval|settimeout|setinterval|"
        r"fetch|import)[\x00-\x20]*\(|(?:window|self|top|globalthis|defaultview|ownerdocument|"
        r"document)[\x00-\x20]*\.)",
    ),
    # Tagged-template calls run a function without parentheses: alert`1`, [].sort.call`${x}`.
    _rule(
        "tagged-template",
        1,
        _CRIT,
        r"(?:\.[\x00-\x20]*(?:call|apply|bind)|(?:^|[^a-z0-9_$])(?:alert|prompt|confirm|eval|"
        r"settimeout|setinterval|function))[\x00-\x20]*`(?:[^`]*\$\{|`|[0-9]+`)"
        r"|new[\x00-\x20]+function[\x00-\x20]*`",
    ),
    # Bracket or comment-split access to globals and the cookie: only evasive code looks so.
    _rule(
        "js-global-access",
        1,
        _CRIT,
        r"(?:^|[^a-z0-9_$])(?:window|self|top|parent|frames|globalthis|this|document|"
        r"\(" + _JS_GAP + "document" + _JS_GAP + r"\))" + _JS_GAP + r"\[" + _JS_GAP + r"[\"'`]"
        r"|document" + _JS_GAP + r"\." + _JS_GAP + r"(?:cookie|domain)(?:$|[^a-z0-9_$])"
        r"|document" + _JS_GAP + r"\." + _JS_GAP + r"(?:write(?:ln)?|createelement|"
        r"queryselector(?:all)?|getelementby[a-z]+|body" + _JS_GAP + r"\.[a-z]+)" + _JS_GAP + r"\("
        r"|(?:window|document)" + _JS_GAP + r"\." + _JS_GAP + r"location(?:$|[^a-z0-9_$])",
    ),
    _rule(
        "jsfuck",
        1,
        _CRIT,
        r"[+!][\x00-\x20]*![\x00-\x20]*\[[\x00-\x20]*\]|![\x00-\x20]*\[[\x00-\x20]*\][\x00-\x20]*"
        r"[+)\]\[]|\[[\x00-\x20]*\][\x00-\x20]*\[[\x00-\x20]*[(\[!]",
    ),
    _rule(
        "ssi-directive",
        1,
        _CRIT,
        r"<!--[\x00-\x20]*#[\x00-\x20]*(?:exec|include|echo|set|"
        r"config|printenv|fsize|flastmod)",
    ),
    _rule(
        "xml-external-entity",
        1,
        _CRIT,
        r"!entity[\x00-\x20]+(?:%[\x00-\x20]+)?[^\x00-\x20]+[\x00-\x20]+(?:system|public)",
    ),
    # Letters spaced apart ("<f o r m") to slip past tag-name lists.
    _rule(
        "spaced-tag",
        1,
        _CRIT,
        r"<[^a-z0-9<>]{0,4}(?:"
        + "|".join(
            _spelled(tag, r"[\x00-\x20]+")
            for tag in (
                "script",
                "iframe",
                "form",
                "dialog",
                "object",
                "embed",
                "svg",
                "style",
                "meta",
            )
        )
        + ")"
        + _NAME_END,
    ),
    # A dialog or code-evaluating call where code goes: at the start of the value, after JS
    # punctuation ('";setTimeout(', "=eval(") or after a quote and an operator ("'-alert(1)-'",
    # the string breakout inside an expression). Prose ("set an alert(s)") waits for level 2.
    # Also the spellings that keep the call without its plain shape: "alert?.(", "(alert)(",
    # "(z=alert)(", "top.alert(", "[1].map(alert)", and a dynamic "import(" after a breakout.
    _rule(
        "js-call-code",
        1,
        _CRIT,
        r"(?:^[\x00-\x20\"'`]*|[;=(,{}|&!+?:\"'`]|[\"'`][-*/%^~<>])[\x00-\x20]*"
        r"(?:alert|prompt|confirm|eval|settimeout|setinterval|execscript|globaleval|atob|btoa|new"
        + _JS_GAP
        + "function)"
        + _JS_GAP
        + r"(?:\?\.)?\("
        + r"|(?:^|[^a-z0-9_$])(?:window|self|top|parent|frames|globalthis|opener|defaultview)"
        + _JS_GAP
        + r"\."
        + _JS_GAP
        + r"(?:alert|prompt|confirm|eval|settimeout|setinterval)"
        + _JS_GAP
        + r"(?:\?\.)?\("
        + r"|\((?:[\x00-\x20]*[a-z_$][a-z0-9_$]*[\x00-\x20]*=)?[\x00-\x20]*"
        r"(?:alert|prompt|confirm|eval)[\x00-\x20]*\)[\x00-\x20]*\("
        r"|\.[a-z]+[\x00-\x20]*\([\x00-\x20]*(?:alert|prompt|confirm|eval)[\x00-\x20]*\)"
        r"|[;(=\"'`][\x00-\x20]*import\(",
    ),
    # XML that makes a parser fetch or reinterpret markup; namespaced XML is normal in an XML
    # request body, so that location is left to the paranoia-2 rule.
    _rule(
        "xml-namespace",
        1,
        _CRIT,
        r"<[\x00-\x20]*[a-z][^>]*[\x00-\x20/](?:xmlns(?::[a-z0-9_-]+)?|xlink:href|"
        r"[a-z0-9_-]+:schemalocation)[\x00-\x20]*=|<[\x00-\x20]*xi:include",
    ),
    # Any on* name opening a value that starts with whitespace, or after an attribute-breaking
    # quote and a separator with code as its value (' onxyz=alert(1)): outside a tag, the gap
    # or the quote is what turns the text into an attribute. Bare "onsale=1" (a nested query
    # string) and '"status" ongoing=1' are left to level 2.
    _rule(
        "quote-handler",
        1,
        _CRIT,
        r"^[\x00-\x20]+on[a-z]{3,40}[\x00-\x20]*="
        r"|[\"'`][\x00-\x20/]+on[a-z]{3,40}[\x00-\x20]*=[\x00-\x20\"'`]*[a-z_$][a-z0-9_$.]*"
        r"[\x00-\x20]*[(`\[=]",
    ),
    # Elements whose content the HTML parser reads as raw text: opening one (mutation XSS,
    # "<noscript><p title=\"</noscript><img…"), or closing one before any markup was opened and
    # then ending or opening markup (the value breaks out of the <title> or <textarea> it is
    # reflected into; "the </title> tag" in prose goes on with words).
    _rule(
        "rawtext-breakout",
        1,
        _CRIT,
        _OPEN
        + r"/?[\x00-\x20]*(?:noscript|noembed|noframes|xmp|plaintext|listing)"
        + _NAME_END
        + r"|^[^<]*<[\x00-\x20]*/[\x00-\x20]*(?:title|textarea|template|option|select|math|svg)"
        r"(?:[\x00-\x20/][^<>]*)?>[\x00-\x20]*(?:$|<)",
    ),
    # Closing an HTML comment or CDATA section the value is reflected into: the marker alone
    # at the start of the value, or right after a quote, "=" or ">". An arrow between words
    # ("A --> B") is prose.
    _rule(
        "comment-breakout",
        1,
        _CRIT,
        r"(?:^|[\"'`=>])[\x00-\x20]*(?:--!?|\]\])>",
    ),
    # A tag left open after a quoted URL or style attribute ('<a href="x"'): reflected, it takes
    # over the attributes of the page's next tag. And dangling markup: a loading attribute whose
    # quote never closes ("<img src='//evil/?"), which sends the page up to the next quote away.
    _rule(
        "dangling-tag",
        1,
        _CRIT,
        r"<[\x00-\x20]*[a-z][a-z0-9:_-]*[\x00-\x20/]+(?:[^<>]*[\x00-\x20/\"'`])?(?:href|src|"
        r"srcset|action|data|style|background|poster|content|http-equiv|target|xlink:href)"
        r"[\x00-\x20]*=[\x00-\x20]*(?:\"[^\"<>]*\"|'[^'<>]*'|`[^`<>]*`)[\x00-\x20/]*$"
        r"|<[\x00-\x20]*(?:img|image|video|audio|source|input|iframe|link|meta|table|td|body|"
        r"object|embed|base|script)" + _TAG_GAP + r"(?:[^<>]*[\x00-\x20/\"'`])?(?:src|background|"
        r"poster|href|action|data|content)[\x00-\x20]*=[\x00-\x20]*[\"'`][^\"'`<>]*$",
    ),
    # Form controls with the attributes that make an injected one act: focus without a click
    # (autofocus), submitting elsewhere (formaction, form=), key shortcuts, input patterns; and
    # forms posting elsewhere. A plain '<input type="text">' in prose is left to level 2.
    _rule(
        "form-control",
        1,
        _CRIT,
        _OPEN + r"(?:(?:input|button|select|textarea|keygen)" + _TAG_GAP + r"(?:[^>]*[\x00-\x20/"
        r"\"'`])?(?:(?:autofocus|pattern|accesskey|popovertarget)(?:$|[\x00-\x20/>=])|"
        r"form(?:action|target|method)?[\x00-\x20]*=)|isindex"
        + _NAME_END
        + r"|form"
        + _TAG_GAP
        + r"[^>]*action)",
    ),
    # Internet Explorer's filter-evasion shape: a quote, then the "in" operator reaching
    # location, name, onerror, valueOf or a property path, then an assignment.
    _rule(
        "ie-in-operator",
        1,
        _CRIT,
        r"(?:^|=)[\x00-\x20]*[\"'`]+(?:[\x00-\x20]*in[\x00-\x20]+(?:location|name|onerror|"
        r"valueof|" + _JS_PATH + r")|[\x00-\x20]+in" + _JS_PATH + r")[\x00-\x20]*=(?:$|[^=])",
    ),
    # --- paranoia 2: script without markup, risky elements, unknown handlers ---
    _rule(
        "js-call",
        2,
        _CRIT,
        r"(?:^|[^a-z0-9_$])(?:alert|prompt|confirm|eval|settimeout|setinterval|execscript|"
        r"msgbox|globaleval|atob|btoa|fromcharcode|new"
        + _JS_GAP
        + "function|import)"
        + _JS_GAP
        + r"\(|document"
        + _JS_GAP
        + r"\."
        + _JS_GAP
        + r"(?:write|writeln|body|"
        r"createelement|queryselector[a-z]*|getelementsby[a-z]+|getelementbyid)"
        r"|\.(?:inner|outer)html[\x00-\x20]*=|(?:^|[^a-z0-9_$])import[\x00-\x20]*\{[^}]*\}"
        r"[\x00-\x20]*from",
    ),
    _rule(
        "handler-attribute",
        2,
        _CRIT,
        r"(?:^|[\x00-\x20\"'`/;,(+0-9])on[a-z]{3,40}[\x00-\x20]*=",
    ),
    _rule(
        "risky-tag",
        2,
        _CRIT,
        _OPEN + r"(?:svg|math|form|input|textarea|button|select|keygen|marquee|details|dialog|"
        r"video|audio|source|img|image|body|html|template|noscript|noembed|noframes|xmp|"
        r"plaintext|listing|title|blink|a" + _TAG_GAP + r"[^>]*href)" + _NAME_END,
    ),
    _rule(
        "script-url-text",
        2,
        _CRIT,
        r"(?:^|[^a-z0-9])" + _SCRIPT_SCHEME + _IN_SCHEME + ":",
    ),
    _rule(
        "xml-markup",
        2,
        _CRIT,
        r"xmlns(?::[a-z0-9_-]+)?[\x00-\x20]*=|xlink:href|<[\x00-\x20]*xi:include|"
        r"schemalocation[\x00-\x20]*=",
    ),
    # --- paranoia 3: any element, comment markers, DOM access ---
    _rule("html-tag", 3, Severity.WARNING, r"</?[a-z][a-z0-9_:-]*(?:[\x00-\x20/][^>]*)?>"),
    _rule("html-comment", 3, Severity.WARNING, r"<!--|-->"),
    _rule(
        "dom-access",
        3,
        Severity.WARNING,
        r"(?:^|[^a-z0-9_$])(?:window|document)" + _JS_GAP + r"\." + _JS_GAP + r"[a-z_$]",
    ),
    # --- paranoia 4: anything that opens markup ---
    _rule("markup-open", 4, Severity.NOTICE, r"<[\x00-\x20]*[a-z!/?]"),
)

# Bytes 0x80-0xBF read as latin-1, with the high bit dropped (a US-ASCII decoder that ignores
# it turns 0xBC into "<"). Bytes 0xC0-0xFF are dropped: they are the lead bytes of the UTF-8
# spelling of those characters ("\\xc2\\xbc", or "\\xd0\\xbc" from a lenient decoder).
_HIGH_BIT_STRIP: dict[int, int | None] = {
    code: (code & 0x7F if code < 0xC0 else None) for code in range(0x80, 0x100)
}
# A whole element spelled in high-bit bytes ("\\xbctest\\xbe"): harmless markup in ASCII, but
# only an evasion writes it so. Checked on the entity- and escape-resolved form, before NFKC
# would turn "¼" into "1", a fraction slash and "4".
_HIGH_BIT_TAG = re2.compile(r"(?i)\x{bc}[\x{c0}-\x{ff}]?/?[a-z][a-z0-9:_-]*[\x{c0}-\x{ff}]?\x{be}")
_HIGH_BIT_RULE = _rule("high-bit-markup", 1, _CRIT, _HIGH_BIT_TAG.pattern)
# Rules that a whole request body legitimately trips (an XML document declares namespaces).
_NOT_IN_RAW_BODY = frozenset({"xss-xml-namespace"})
_LOOSE_ENTITIES = (("&tab;", "\t"), ("&newline;", "\n"), ("&colon;", ":"))
# UTF-7 spellings of "<", ">" and '"' ("+ADw-"), longest first. Plain replacements rather than
# a regex substitution with a callback, which costs microseconds per match ("+ADw-" * 16000).
_UTF7_SPELLINGS = tuple(
    (f"{prefix}ad{code}{suffix}", char)
    for code, char in (("w", "<"), ("4", ">"), ("i", '"'))
    for prefix in ("+", " ", "")
    for suffix in ("-", "")
)


def _rule_set(rules: tuple[_Rule, ...]) -> Any:
    """All rules in one RE2 set: a single linear pass reports every rule that matches."""
    options = re2.Options()
    options.max_mem = 64 << 20
    rule_set = re2.Set.SearchSet(options)
    for rule in rules:
        rule_set.Add(rule.pattern.encode())
    rule_set.Compile()
    return rule_set


_RULE_SET = _rule_set(_RULES)


def _utf7(text: str) -> str:
    for spelling, char in _UTF7_SPELLINGS:
        if spelling in text:
            text = text.replace(spelling, char)
    return text


def _forms(value: Normalized) -> Iterable[str]:
    """The folded value and the re-decodings that differ from it (each at most once)."""
    # Lone surrogates (from "\\ud83d" escapes) are not UTF-8, which RE2 needs; they hide nothing.
    folded = value.folded.encode("utf-8", "replace").decode("utf-8")
    yield folded
    if "&" in folded:
        # Entities escaped twice (&amp;tab;) and the lower-case spellings some filters and
        # old parsers accept for the whitespace and colon entities.
        twice = html.unescape(value.nfkc).casefold()
        for entity, char in _LOOSE_ENTITIES:
            twice = twice.replace(entity, char)
        if twice != folded:
            yield twice
    if "\xbc" in value.unescaped:
        yield value.unescaped.translate(_HIGH_BIT_STRIP).casefold()
    if "adw-" in folded:
        yield _utf7(folded)


# Letters, digits, whitespace and punctuation no rule is built on: every rule needs one of
# "<", ">", "=", ":", "(", "[", "{", "`", "!" or "#" (a test checks each rule), or one of the
# words below. Anything that decodes to markup ("%3c", "&lt;", "\\x3c", full-width or high-bit
# forms) needs "%", "&", "\\" or a non-ASCII character, so such values pass through the full
# check; "+" only decodes to a space (UTF-7 needs "adw-").
_INERT_BYTES = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.- \t\r\n,;'\"?*$^|~/@+)]}"
)
# "document.cookie" and "window.location" need only letters and dots; "ADw-" is UTF-7 for "<".
_INERT_WORDS = ("document", "window", "adw-")
# The rules each of these characters can take part in without one of the characters above also
# need one of these words: "=" srcdoc, formaction, language, style, xmlns, schemaLocation,
# innerHTML (or an on* name right before it, or "in" after a quote: checked apart); "(" script
# calls, url() and expression(); ":" style, -moz-binding, xlink:href and the script and data
# schemes (spelled with tabs or line breaks between letters); "#" the script encoder marker; "!"
# an XML entity declaration. A test checks each rule against them.
_CHAR_WORDS: dict[int, tuple[str, ...]] = {
    ord("="): ("formaction", "schemalocation", "language", "style", "xmlns", "html", "srcdoc"),
    ord("("): (
        "alert", "prompt", "confirm", "eval", "settimeout", "setinterval", "execscript",
        "globaleval", "atob", "btoa", "function", "import", "msgbox", "fromcharcode", "url",
        "expression",
    ),
    ord(":"): ("style", "-moz-binding", "behavior", "xlink:href"),
    ord("#"): ("#@~^",),
    ord("!"): ("!entity",),
}  # fmt: skip
_WORDED_CHARS = bytes(_CHAR_WORDS)
_SPELLED_SCHEMES = ("javascript", "vbscript", "livescript", "data")
_SCHEME_GAPS = str.maketrans("", "", "\t\n\r")


def _inert(raw: str) -> bool:
    """Whether ``raw`` cannot match any rule (a cheap test before decoding anything)."""
    if not raw.isascii():
        return False
    rest = raw.encode().translate(None, _INERT_BYTES)
    if rest.translate(None, _WORDED_CHARS):
        return False  # "<", ">", "[", "{", "`", "%", "&", "\\" or a control character
    # What the rules will see: with nothing else to decode, "+" is a space ("onload+=").
    lowered = raw.lower().replace("+", " ")
    if any(word in lowered for word in _INERT_WORDS):
        return False
    for char in set(rest):
        if any(word in lowered for word in _CHAR_WORDS[char]):
            return False
    if b"=" in rest and (
        _handler_before_equals(lowered)
        or ("in" in lowered and ("'" in lowered or '"' in lowered or "`" in lowered))
    ):
        return False
    if b":" in rest:
        squeezed = lowered.translate(_SCHEME_GAPS)
        return not any(scheme in squeezed for scheme in _SPELLED_SCHEMES)
    return True


def _handler_before_equals(text: str) -> bool:
    """Whether some "=" follows, past spaces and control characters, a run of letters holding "on"
    and at least three letters after it: what every on* handler rule needs (``onload =``)."""
    index = text.find("=")
    while index >= 0:
        end = index
        while end > 0 and text[end - 1] <= " ":
            end -= 1
        start = end
        while start > 0 and "a" <= text[start - 1] <= "z":
            start -= 1
        if "on" in text[start : end - 3]:
            return True
        index = text.find("=", index + 1)
    return False


def detect_xss(value: Normalized, location: Location, paranoia: int) -> list[Match]:
    """Cross-site scripting matches in ``value`` for rules enabled at ``paranoia``."""
    if _inert(value.raw):
        return []
    hits: set[int] = set()
    for form in _forms(value):
        hits.update(_RULE_SET.Match(form.encode("utf-8", "replace")) or ())
    matches: list[Match] = []
    if "\xbc" in value.unescaped and _HIGH_BIT_TAG.search(value.unescaped):
        rule = _HIGH_BIT_RULE
        matches.append(Match(rule.name, "xss", rule.severity, location, rule.paranoia))
    for index in sorted(hits):
        rule = _RULES[index]
        if rule.name in _NOT_IN_RAW_BODY and location.kind == "body":
            continue
        if rule.paranoia <= paranoia:
            matches.append(Match(rule.name, "xss", rule.severity, location, rule.paranoia))
    return matches
