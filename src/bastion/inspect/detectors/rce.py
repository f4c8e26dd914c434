"""OS command injection: Unix shell and Windows ``cmd``/PowerShell syntax in a value.

The value is read the way a shell would read it (:func:`scan_shell`): quotes, backslashes,
empty variable expansions, brace expansion and ``${IFS}`` are resolved, so ``c'a't``,
``ca\\t``, ``c$@at``, ``{cat,/etc/passwd}`` and ``cat${IFS}/etc/passwd`` all become the
command ``cat /etc/passwd``. The signal is a known command word *in command position*: after a
separator (``;``, ``|``, ``&``, newline), inside a substitution (``$(…)``, backticks, ``<(…)``)
or behind a prefix like ``time``/``nohup``. Plain text rarely puts a command word there with
command-line arguments, so "Tom & Jerry", "rock|paper" and "a; b" stay silent.

Paranoia 1 reports only confident findings; a command word at the very start of a value, a lone
command word or a bare substitution are weaker and need a higher paranoia level. A command word
followed by ordinary words and a bare ``$(…)`` are common in prose, Markdown and templates
(about 4% of benign API requests have one), so they wait for paranoia 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import re2

from bastion.inspect.core import Finder, Location, Match, Normalized, Severity
from bastion.inspect.detectors._shell import Command, Word, glob_matches, glob_units, scan_shell

__all__ = ["detect_rce"]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Tool names that are not ordinary words: one after a separator is an attack even alone.
_STRONG = _words(
    """
    whoami uname ifconfig ipconfig netstat nslookup traceroute tracert wget curl ncat netcat
    socat telnet tftp bash zsh ksh csh tcsh dash busybox powershell pwsh certutil bitsadmin mshta
    rundll32 regsvr32 regedit wmic cscript wscript schtasks tasklist taskkill systeminfo netsh
    vssadmin wevtutil bcdedit bcdboot chmod chown chgrp chattr base64 base32 xxd hexdump strace
    ltrace gdb nohup crontab useradd adduser usermod userdel visudo sudo doas pkexec mkfifo
    mknod iptables nmap tcpdump tshark cscli kubectl ansible lwp-download lwp-request lynx w3m
    aria2c zstdcat zcat gunzip unxz bunzip2 bzcat xzcat lastlog htop vmstat dmesg sysctl
    modprobe insmod rmmod killall pkill pgrep lsof ldd openssl ssh-keygen ssh-copy-id
    iex iwr iwmi irm icm gcc g++ clang c89 c99 irb jrunscript jshell cpulimit rmt rmt-tar
    rmt-dump aptitude apt-get ansible-playbook shutdown poweroff ifup ifdown hostnamectl passwd
    chpasswd setfacl getfacl pip pip3 pipx uconv uuencode uudecode
    """
)
# Short shell jargon: not English words, but too short to trust without context at the start.
_JARGON = _words(
    """
    id ls ll ps pwd env tac wc rm mv cp ln cd dd awk gawk sed printf eval tr nl uniq grep egrep
    fgrep rgrep mkdir rmdir sh nc php perl ruby python node nodejs lua tclsh java jar wget2 ip
    su scp sftp ssh ftp rsync tar gzip bzip2 xz zip unzip 7z npm npx gem yum dnf rpm dpkg apk
    apt systemctl uptime hostname whereis pip2 vim vi nano ex ed reg cmd sc net1 getent
    """
)
# Commands that are also everyday words: they need command-line arguments to count.
_WORDLIKE = _words(
    """
    cat time sleep ping kill find sort head tail more less who last top set type dir copy del
    move start call echo print file date cut fold comm column bridge touch stat locate which
    history source export alias unset exec tee rev at watch nice timeout flock perf chef docker
    git mount umount halt reboot shuf seq trap dig whois
    """
)
_KNOWN = _STRONG | _JARGON | _WORDLIKE
_GLOB_NAMES = tuple(sorted(_KNOWN))
"""Every known command, in the order a wildcard word is resolved against them."""
_GLOB_NAMES_BY_FIRST: dict[str, tuple[str, ...]] = {}
for _name in _GLOB_NAMES:
    _GLOB_NAMES_BY_FIRST[_name[0]] = (*_GLOB_NAMES_BY_FIRST.get(_name[0], ()), _name)
del _name
_GLOB_SPECIALS = "?*["
# Words that run the word after them: that word is in command position too.
_PREFIXES = _words(
    """
    time nohup strace ltrace sudo doas env exec command builtin nice timeout xargs watch setsid
    stdbuf unbuffer then do else if while until ! { busybox cpulimit flock .
    """
)
# Prefixes that are themselves attack tools: whatever they run is reported.
_STRONG_PREFIXES = frozenset({"nohup", "strace", "ltrace", "sudo", "doas", "busybox", "setsid"})
_SLEEPERS = frozenset({"sleep", "ping", "timeout"})
# Bare file names that only matter as a command's argument (cd /etc; fold passwd).
_SENSITIVE_NAMES = frozenset(
    {"passwd", "shadow", "sudoers", "id_rsa", "environ", "master.passwd", "authorized_keys"}
)
_BIN_PREFIXES = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/", "bin/")
# SQLite shell dot-commands that run programs or touch files.
_SQLITE_DOT = frozenset(
    {".shell", ".sh", ".system", ".databases", ".import", ".output", ".once", ".load", ".read"}
)
_BIN_DIRS = frozenset({"bin", "sbin", "usr", "local", "opt", "system32", "windows"})
# Sensitive absolute paths an obfuscated (wildcard) argument may resolve to.
_SENSITIVE_PATHS = (
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/hosts",
    "/etc/sudoers",
    "/etc/master.passwd",
    "/etc/issue",
    "/proc/self/environ",
    "/bin/sh",
    "/bin/bash",
    "/bin/nc",
    "/usr/bin/id",
)

# Values of letters, digits and "_.-" only (ids, tokens, numbers) are one word with nothing
# around it: at most a lone command word, which only paranoia 3 reports. Deleting these bytes
# is one C-level pass; whatever is left is the value's punctuation.
_WORD_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_WEAK_LEVEL = 3
"""Paranoia level of the weak command signals (ordinary-word arguments, bare substitutions)."""

_IPV4 = Finder(r"^\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?$")
_ASSIGNMENT_NAME = re2.compile(r"^[a-z_][a-z0-9_]*$")

# Shellshock: a function definition at the start of a (header) value.
_SHELLSHOCK = Finder(r"^\s*\(\s*\)\s*\{")
_FUNCTION_DEF = re2.compile(r"([\w:.]{1,32})\s*\(\s*\)\s*\{([^}]{0,200})\}")
_DEV_TCP = re2.compile(r"/dev/(?:tcp|udp)/[\w.\-$]")
# Windows batch control flow, only in command position (start, after & | ; ( newline or @).
_BATCH_FOR = re2.compile(
    r"(?:^|[&|;(\n@])\s*for\s+(?:/[dlrf]\s+(?:\\?\"[^\"]{0,200}\"\s+|[^\s%\"][^\s]{0,200}\s+)?)*"
    r"%%?[^\s]{1,32}\s+in\s*\([^)]{0,1000}\)\s*do\b"
)
_BATCH_IF = re2.compile(
    r"(?:^|[&|;(\n@])\s*if(?:\s+|\s*/i\s+)(?:/i\s+)?(?:not\s+)?(?:"
    r"(?:exist|defined|errorlevel|cmdextversion)\s+[^\s]"
    r"|(?:\"[^\"]{0,200}\"|[^\s=]{1,200})\s*(?:==|\s(?:equ|neq|lss|leq|gtr|geq)\s)\s*[^\s]"
    r"|\([^)]{0,200}\)\s*(?:==|equ|neq|lss|leq|gtr|geq)\s*[^\s])"
)
# Each ``if`` form tests with one of these.
_BATCH_IF_WORDS = (
    "==", "exist", "defined", "errorlevel", "cmdextversion", "equ", "neq", "lss", "leq", "gtr",
    "geq",
)  # fmt: skip
# Each PowerShell alternative holds one of these.
_POWERSHELL_MARKS = ("invoke-", "start-", "new-object", ".download", "frombase64string", "-enc")
_POWERSHELL = Finder(
    r"\b(?:invoke-(?:webrequest|expression|restmethod|command|wmimethod|item)"
    r"|start-process|start-bitstransfer|new-object\s+(?:system\.)?net\.webclient"
    r"|\.downloadstring\s*\(|\.downloadfile\s*\(|frombase64string\s*\("
    r"|-(?:encodedcommand|enc)\s+[a-z0-9+/=]{16})"
)
# Mail protocol commands smuggled after a line break (SMTP, IMAP, POP3 injection).
_MAIL_CONFIDENT = re2.compile(
    r"(?:\r\n|\n)\s*(?:mail\s+from\s*:\s*<|rcpt\s+to\s*:\s*<|(?:ehlo|helo)\s+[\w.\-]+\s*(?:$|\r|\n)"
    r"|[a-z]{0,4}\d{1,6}\s+(?:append|authenticate|status|uid|examine|select|copy|list|lsub|store"
    r"|search|fetch|login|create|delete|rename|expunge|capability|logout)\b"
    r"|(?:retr|dele|top|list)\s+\d+(?:\s+\d+)?\s*(?:$|\r|\n)|apop\s+\S+\s+[0-9a-f]{32}"
    r"|auth\s+\S+\s+[a-z0-9+/]{8,}={0,2}\s*(?:$|\r|\n))"
)
_MAIL_WEAK = re2.compile(
    r"\r\n\s*(?:data|quit|help|rset|noop|[a-z]\d*\s+(?:store|list|copy|quit)\b)(?:\s|$)"
)


@dataclass(slots=True)
class _Findings:
    """Matches of one value, one per rule (the lowest paranoia level wins)."""

    location: Location
    paranoia: int
    found: dict[str, Match] = field(default_factory=dict)

    def add(self, name: str, level: int, severity: int = Severity.CRITICAL) -> None:
        if level > self.paranoia:
            return
        rule = f"rce-{name}"
        known = self.found.get(rule)
        if known is None or known.paranoia > level:
            self.found[rule] = Match(rule, "rce", severity, self.location, level)


def detect_rce(value: Normalized, location: Location, paranoia: int) -> list[Match]:
    """Command-injection matches of ``value`` at ``location`` for rules enabled at ``paranoia``."""
    raw = value.raw
    if paranoia < _WEAK_LEVEL and raw.isascii() and not raw.encode().translate(None, _WORD_BYTES):
        # Also the decoded forms: no "%", "+", "&" or "\\" left anything to decode.
        return []
    text = value.nfkc
    if not text:
        return []
    findings = _Findings(location, paranoia)
    lowered = text.lower()
    if "\\n" in lowered and ":\\" not in lowered:
        # A literal \n is how a newline survives in JSON-ish or escaped input.
        lowered = lowered.replace("\\n", "\n")
    _check_expressions(lowered, location, findings)
    scan = scan_shell(lowered)
    if scan.ifs:
        findings.add("ifs-evasion", 1)
    if scan.parameter_tricks:
        findings.add("parameter-expansion", 1)
    if scan.arithmetic:
        findings.add("arithmetic-expansion", 1)
    if scan.substitutions:
        findings.add("substitution", _WEAK_LEVEL, Severity.ERROR)
    for command in scan.commands:
        _classify(command, findings, scan.aliases)
    return list(findings.found.values())


def _check_expressions(lowered: str, location: Location, findings: _Findings) -> None:
    """Whole-value patterns that need no tokenizing: Shellshock, fork bombs, /dev/tcp…"""
    if "(" in lowered and ")" in lowered:
        if _SHELLSHOCK.found(lowered):
            findings.add("shellshock", 1)
        if "{" in lowered:
            for name, body in _FUNCTION_DEF.findall(lowered):
                if _recurses(str(name), str(body)):
                    findings.add("fork-bomb", 1)
                    break
    if "/dev/" in lowered and _DEV_TCP.search(lowered):
        findings.add("dev-tcp", 1)
    if (
        "for" in lowered
        and " in" in lowered
        and "%" in lowered  # the loop variable
        and _closes_into_do(lowered)
        and _BATCH_FOR.search(lowered)
    ):
        findings.add("windows-for-loop", 1)
    if (
        "if" in lowered
        and any(word in lowered for word in _BATCH_IF_WORDS)
        and _BATCH_IF.search(lowered)
    ):
        findings.add("windows-if", 1)
    if any(mark in lowered for mark in _POWERSHELL_MARKS) and _POWERSHELL.found(lowered):
        findings.add("powershell", 1)
    if "\n" in lowered:
        if _MAIL_CONFIDENT.search(lowered):
            findings.add("mail-command", 1)
        elif _MAIL_WEAK.search(lowered):
            findings.add("mail-command", 2, Severity.ERROR)
    del location


def _closes_into_do(text: str) -> bool:
    """Whether some ")" is followed by "do" past RE2 whitespace, as the list of a batch ``for``
    loop is: a linear test that spares most texts the loop pattern, whose bounded repetitions
    make it costly on text it has not seen."""
    index = text.find(")")
    while index >= 0:
        after = index + 1
        while after < len(text) and text[after] in " \t\n\f\r":
            after += 1
        if text.startswith("do", after):
            return True
        index = text.find(")", after)
    return False


def _ipv4(text: str) -> bool:
    """A dotted-quad address, with an optional port: four digit groups need three dots."""
    return text[:1].isdigit() and text.count(".") == 3 and _IPV4.found(text)


def _recurses(name: str, body: str) -> bool:
    """Whether a function body pipes or backgrounds a call of itself (``:(){ :|:& };:``)."""
    start = 0
    while True:
        index = body.find(name, start)
        if index < 0:
            return False
        rest = body[index + len(name) :].lstrip()
        if rest.startswith("()"):
            rest = rest[2:].lstrip()
        if rest[:1] in ("|", "&"):
            return True
        start = index + 1


def _command_name(word: Word, aliases: dict[str, str]) -> str:
    """The command a word names: basename without ``.exe`` or a version suffix."""
    text = word.text
    if text in aliases:
        text = aliases[text].split(" ", 1)[0]
    if "/" in text:
        text = text.rstrip("/").rsplit("/", 1)[-1]
    text = text.removesuffix(".exe")
    if text in _KNOWN:
        return text
    # python3.10, pip3, gcc7.4: a version suffix does not change the tool.
    stripped = text.rstrip("0123456789.")
    if stripped in _KNOWN and stripped not in ("c", ""):
        return stripped
    if text.startswith(("ansible-", "chef-")):
        return "ansible"
    if text.startswith(("python", "perl", "php", "ruby")):
        return text.split("-", 1)[0].rstrip("0123456789.") or text
    return ""


def _glob_command(word: Word) -> str:
    """A wildcard word (``/???/c?t``, ``/bin/ca*``) resolved to a known command, or ``""``."""
    text = word.text
    if "/" in text:
        head, _, base = text.rstrip("/").rpartition("/")
        parts = [part for part in head.split("/") if part]
        if not parts or not all(_segment_is_bin_dir(part) for part in parts):
            return ""
    else:
        base = text
        if sum(1 for char in base if char.isalnum()) < 2:
            return ""
    if not any(char in base for char in "?*["):
        return base if base in _KNOWN else ""
    # A pattern starting with a literal character only matches names starting with it, and
    # only names as long as its fixed units (longer ones too if it has a "*").
    first = base[:1]
    units, star = glob_units(base)
    for name in _glob_candidates("" if first in _GLOB_SPECIALS else first, units, star):
        if glob_matches(base, name):
            return name
    return ""


@lru_cache(maxsize=1024)
def _glob_candidates(first: str, units: int, star: bool) -> tuple[str, ...]:
    """Known command names, in :data:`_GLOB_NAMES` order, that a wildcard pattern with ``units``
    fixed units (and a ``*`` if ``star``) starting with literal ``first`` (``""``: any) could
    match."""
    names = _GLOB_NAMES_BY_FIRST.get(first, ()) if first else _GLOB_NAMES
    return tuple(name for name in names if len(name) == units or (star and len(name) >= units))


def _segment_is_bin_dir(part: str) -> bool:
    if part in _BIN_DIRS:
        return True
    if not any(char in part for char in "?*["):
        return False
    return any(glob_matches(part, name) for name in _BIN_DIRS)


def _sensitive_glob(word: Word) -> bool:
    """Whether a wildcard argument resolves to a sensitive path (``/e??/p?ss*``)."""
    text = word.text
    if not word.glob or not text.startswith("/") or sum(char.isalnum() for char in text) < 3:
        # A lone "*" matches every path: only a mostly spelled-out path is a disguise.
        return False
    return any(glob_matches(text, path) for path in _SENSITIVE_PATHS)


def _shellish(word: Word, name: str) -> bool:
    """Whether an argument looks like a command-line argument rather than a prose word."""
    text = word.text
    if not text:
        return False
    first = text[0]
    if first == "-" and len(text) > 1 and (text[1].isalnum() or text[1] == "-"):
        return True
    if first in "/~$" and len(text) > 1:
        return True
    if text.startswith(("./", "../")) or "://" in text or word.dynamic:
        return True
    if _ipv4(text):
        return True
    if name in _SLEEPERS and text.isdigit():
        return True
    if text == "/" or text in _SENSITIVE_NAMES:
        return True
    if "/" in text and not text.endswith("/"):
        return True
    # file.txt, evil.php: a file name argument, not a sentence.
    base, dot, ext = text.rpartition(".")
    return bool(dot and base and 1 <= len(ext) <= 4 and ext.isalnum() and base[-1].isalnum())


def _strong_shellish(word: Word) -> bool:
    """Arguments that prose virtually never has: option flags, deep absolute paths, URLs."""
    text = word.text
    if len(text) > 1 and text[0] == "-" and (text[1].isalpha() or text[1] == "-"):
        return True
    if text.startswith(("/", "~/")) and text.count("/") >= 2 and not text.startswith("//"):
        return True
    # dd if=/etc/passwd: an option whose value is an absolute path.
    key, equals, value = text.partition("=")
    if equals and key.isalpha() and value.startswith("/") and value.count("/") >= 2:
        return True
    return word.dynamic or _ipv4(text)


def _classify(command: Command, findings: _Findings, aliases: dict[str, str]) -> None:
    """Report the command words of one simple command, by position and arguments."""
    words = command.words
    intro = command.intro
    index = 0
    while index < len(words):
        word = words[index]
        name = _command_name(word, aliases)
        glob_name = _glob_command(word) if word.glob and not name else ""
        if glob_name:
            findings.add("wildcard-command", 1 if word.text.startswith("/") else 2)
            name = glob_name
        args = words[index + 1 :]
        globs = [arg for arg in words[index:] if arg.glob]  # most commands have none
        if globs and any(_sensitive_glob(arg) for arg in globs):
            findings.add("wildcard-path", 1)
        if word.text in _SQLITE_DOT and intro != "start":
            findings.add("sqlite-dot-command", 1)
        if name and word.glob:
            findings.add("wildcard-command", 1 if word.text.startswith("/") else 2)
        if name and word.text.startswith(_BIN_PREFIXES):
            findings.add("command-path", 1)
        if name == "alias":
            _judge_alias(args, findings, aliases)
        if name:
            if word.obfuscated and (name in _STRONG or name in _JARGON or args or intro != "start"):
                findings.add("obfuscated-command", 1)
            _judge(name, word, args, command, intro, findings)
        if word.text in _PREFIXES or name in ("time", "nohup", "strace", "sudo", "env"):
            # The next non-option word is run by this one: it is in command position.
            index += 1
            while index < len(words) and words[index].text.startswith("-"):
                index += 1
            if name == "timeout" and index < len(words) and words[index].text.isdigit():
                index += 1
            intro = "strong-prefix" if name in _STRONG_PREFIXES else "prefix"
            continue
        return


def _judge_alias(args: list[Word], findings: _Findings, aliases: dict[str, str]) -> None:
    """``alias ls='ls -al'``: defining an alias for a known command is shell, not prose."""
    for arg in args:
        _, equals, value = arg.text.partition("=")
        if not equals:
            continue
        target = Word(value.split(" ", 1)[0])
        findings.add("alias", 1 if _command_name(target, aliases) else 2)


def _judge(
    name: str, word: Word, args: list[Word], command: Command, intro: str, findings: _Findings
) -> None:
    if intro == "process":
        # <(cmd) / >(cmd): process substitution is shell syntax, whatever the command.
        findings.add("process-substitution", 1)
        return
    if intro == "strong-prefix":
        findings.add("command-after-separator", 1)
        return
    separated = intro in ("separator", "substitution", "prefix", "ampersand")
    # Prose puts a command-like word first in a sentence; only its first arguments count.
    considered = args if name in _STRONG or name in _JARGON else args[:2]
    shellish = command.redirected or any(_shellish(arg, name) for arg in considered)
    lone_jargon = name in _JARGON and not args and intro != "ampersand"
    if separated:
        if name in _STRONG or lone_jargon or shellish:
            findings.add("command-after-separator", 1)
        else:
            findings.add("command-after-separator", _WEAK_LEVEL, Severity.ERROR)
        return
    # At the start of a value (or after a parenthesis in text) a command needs arguments that
    # prose does not have.
    strong_args = command.redirected or any(_strong_shellish(arg) for arg in considered)
    if strong_args or (name in _STRONG and args):
        findings.add("command-line", 1)
    elif args and (shellish or name in _STRONG or name in _JARGON):
        findings.add("command-line", _WEAK_LEVEL, Severity.ERROR)
    elif word.quoted or name in _STRONG or name in _JARGON:
        findings.add("command-word", 3, Severity.WARNING)
    else:
        findings.add("command-word", 4, Severity.NOTICE)
