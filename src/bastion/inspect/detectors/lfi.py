"""Path traversal and local file inclusion.

A value is read as a file path after every decoding a file API or a lenient server might apply:
``Normalized.path`` (URL-decoded, ``\\`` as ``/``, slash runs merged), plus the spellings that
survive it — textual ``0x2e``/``0x2f``/``0x5c``, NUL bytes, Tomcat path parameters (``..;/``) and
Windows' trailing dots and spaces (``.../``, ``.. /``). The detector then walks the segments:

- a traversal that climbs above where it started (``../``), with how far and how disguised;
- sensitive files and directories (``/etc/passwd``, ``/proc/self/environ``, ``.git/config``,
  ``win.ini``, ``id_rsa``, editor and coding-tool configuration directories…);
- PHP and archive stream wrappers (``php://filter``, ``phar://``, ``file://``…).

Paranoia 1 needs a traversal that reaches a sensitive target, climbs far, is disguised or sits in
an upload file name; a sensitive target on its own; or a wrapper. A plain relative reference like
``../images/a.png`` is reported from paranoia 2.
"""

from __future__ import annotations

import re2

from bastion.inspect.core import Finder, Location, Match, Normalized, Severity

__all__ = ["detect_lfi"]

_WRAPPER = Finder(
    r"(?i)(?:^|[^a-z0-9.+-])(php|phar|zip|expect|data|glob|file|compress\.zlib|compress\.bzip2"
    r"|zlib|rar|ogg|ssh2\.[a-z]+)://"
)
# Sensitive targets, matched against the normalised, lower-cased path (segment boundaries).
_SENSITIVE = Finder(
    r"(?:^|/)(?:"
    r"etc/(?:passwd|shadow|gshadow|group|master\.passwd|sudoers|subuid|subgid|hosts|crontab"
    r"|issue|security/|ssh/|mysql/my\.cnf|apache2?/|httpd/|nginx/|php[0-9.]*/)"
    r"|proc/(?:self|thread-self|\d+)/(?:environ|cmdline|fd|maps|mem|status|cwd|root|exe)"
    r"|proc/(?:version|interrupts|net/|sys/|mounts|config\.gz|kcore)"
    r"|sys/(?:class|kernel|devices|firmware)(?:/|$)"
    r"|root/\.|var/log/|var/run/secrets/|usr/local/(?:etc|apps)/"
    r"|(?:windows|winnt)/(?:system32/|system\.ini|win\.ini|repair/|panther/)"
    r"|boot\.ini|win\.ini|system\.ini|web\.config|httpd\.conf|php\.ini|my\.cnf"
    r"|\.htaccess|\.htpasswd|\.git/|\.svn/|\.hg/|\.bzr/|\.ssh/|\.aws/|\.azure/|\.kube/|\.docker/"
    r"|\.gnupg/|\.npmrc|\.pypirc|\.netrc|\.pgpass|\.git-credentials|\.bash_history|\.zsh_history"
    r"|\.mysql_history|\.psql_history|\.history|\.env(?:\.[a-z0-9_]+)?$|id_(?:rsa|dsa|ecdsa|ed25519)"
    r"|authorized_keys|known_hosts|wp-config\.php|local\.xml|\.ds_store"
    r"|@fs/|@id/__x00__"
    r"|wp-content/(?:debug|error|errors)\.log"
    r"|backup\.(?:sql|tar|tgz|zip|gz)(?:\.[a-z0-9]+)?$"
    r"|\.(?:claude|cursor|continue|aider|roo|zed|cline|kiro|windsurf|rovodev|codex|opencode"
    r"|a0proj|plandex|fabric|n8n|junie|gemini|copilot|vscode|idea)/"
    r"|\.(?:aiignore|cursorignore|cursorrules|clinerules|aiderignore)$"
    r")"
)
# A literal that each alternative of ``_SENSITIVE`` holds ("/." for the dot names after a "/"):
# a few substring tests spare most paths the search (a test checks every alternative).
_SENSITIVE_MARKS = (
    "etc/", "proc/", "sys/", "root/.", "var/", "usr/local/", "windows/", "winnt/", "boot.ini",
    "win.ini", "system.ini", "web.config", "httpd.conf", "php.ini", "my.cnf", "/.", "id_",
    "authorized_keys", "known_hosts", "wp-config.php", "local.xml", "@fs/", "@id/",
    "wp-content/", "backup.",
)  # fmt: skip
# Hidden files in general (not .well-known): weaker than the named ones above.
_HIDDEN = re2.compile(r"(?:^|/)\.(?:[a-z0-9_-]{2,})(?:/|$)")
# Letters, digits, spaces and punctuation other than "/", ".", "_" (every rule needs one: a
# traversal "..", a wrapper "://", a hidden ".name", every sensitive name without a "/" has a "."
# or "_": win.ini, id_rsa, known_hosts…) and other than what decodes to them ("%", "&", "\\";
# "+" only decodes to a space). Such a value is not a path to anything this detector reports
# unless "0x2e"-style spelling supplies the dots.
_INERT_BYTES = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789- \t!\"#$'()*+,:;<=>?@[]^`{|}~"
)
_FAR = 3
"""Climbing this many levels above the start is far beyond any relative reference."""


def detect_lfi(value: Normalized, location: Location, paranoia: int) -> list[Match]:
    """Path traversal / file inclusion matches of ``value`` for rules enabled at ``paranoia``."""
    raw = value.raw
    if not raw or (
        raw.isascii() and not raw.encode().translate(None, _INERT_BYTES) and "0x" not in raw.lower()
    ):
        return []
    found: dict[str, Match] = {}

    def add(name: str, level: int, severity: int = Severity.CRITICAL) -> None:
        rule = f"lfi-{name}"
        if level <= paranoia and (rule not in found or found[rule].paranoia > level):
            found[rule] = Match(rule, "lfi", severity, location, level)

    path, disguised = _file_path(value)
    lowered = path.lower()
    # Wrappers are read before path normalisation, which would merge the "//".
    if "://" in value.nfkc and _WRAPPER.found(value.nfkc):
        add("stream-wrapper", 1)
    climb = _climb(lowered) if ".." in lowered else 0
    sensitive = _may_be_sensitive(lowered) and _SENSITIVE.found(lowered)
    if climb:
        if sensitive or climb >= _FAR or disguised or location.kind == "filename":
            add("path-traversal", 1)
        elif "\\" in value.nfkc and ".." in value.nfkc:
            # ..\ is aimed at Windows file APIs; browsers and URL builders never emit it.
            add("path-traversal", 1)
        else:
            add("path-traversal", 2, Severity.ERROR)
    elif "/../" in lowered or lowered.endswith("/.."):
        add("dot-segment", 3, Severity.WARNING)
    if sensitive:
        add("sensitive-file", 1)
    elif (
        (lowered.startswith(".") or "/." in lowered)  # what _HIDDEN needs, tested first
        and ".well-known" not in lowered
        and _HIDDEN.search(lowered)
    ):
        add("hidden-file", 3, Severity.WARNING)
    return list(found.values())


def _may_be_sensitive(path: str) -> bool:
    """A necessary condition for ``_SENSITIVE`` to match ``path``: each of its names holds one
    of ``_SENSITIVE_MARKS``, or is a dot name at the start of the path."""
    return path.startswith(".") or any(mark in path for mark in _SENSITIVE_MARKS)


def _file_path(value: Normalized) -> tuple[str, bool]:
    """The path a file API would open, and whether getting there took a disguise."""
    path = value.path
    disguised = False
    if "0x" in path or "0X" in path:
        spelled = path.lower()
        for code, char in (("0x2e", "."), ("0x2f", "/"), ("0x5c", "/")):
            spelled = spelled.replace(code, char)
        disguised = spelled != path.lower()
        path = spelled
    if "\x00" in path:
        # C file APIs stop at NUL; an attacker adds it to cut off a forced extension.
        path = path.replace("\x00", "")
        disguised = True
    raw = value.raw.lower()
    if "%25" in raw or "%c0" in raw or "%c1" in raw or "%e0%80" in raw or "%u" in raw:
        # Double or overlong encoding of a dot or slash: no client needs it.
        disguised = disguised or ".." in path
    if ";" in path or "..." in path or ". /" in path or ".. " in path:
        path, changed = _windows_and_parameters(path)
        disguised = disguised or changed
    return path, disguised


def _windows_and_parameters(path: str) -> tuple[str, bool]:
    """Drop ``;param`` from segments and Windows-ignored trailing dots/spaces of dot segments."""
    segments = path.split("/")
    changed = False
    for index, segment in enumerate(segments):
        cleaned = segment.split(";", 1)[0] if ";" in segment else segment
        stripped = cleaned.rstrip(". ")
        if not stripped and cleaned and index < len(segments) - 1:
            # ".../" and ".. /" open the parent directory on Windows.
            cleaned = ".."
        if cleaned != segment:
            changed = True
            segments[index] = cleaned
    return "/".join(segments), changed


def _climb(path: str) -> int:
    """How many levels the path climbs above its starting directory (0 if it never does)."""
    depth = 0
    lowest = 0
    for segment in path.split("/"):
        if segment == "..":
            depth -= 1
            lowest = min(lowest, depth)
        elif segment and segment != ".":
            depth += 1
    return -lowest
