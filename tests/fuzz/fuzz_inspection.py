"""Coverage-guided fuzz target (atheris) for the inspection engine.

Every input becomes a request (method, target, headers, body) and goes through location
splitting, normalisation, every detector and the protocol checks at a random paranoia level.
Any exception is a crash: the engine must never raise, whatever the bytes.

    python tests/fuzz/fuzz_inspection.py -runs=3000            # what ``make test`` runs
    python tests/fuzz/fuzz_inspection.py -max_total_time=600   # ``make fuzz``
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["bastion.inspect"]):
    from bastion.inspect.config import InspectConfig
    from bastion.inspect.core import Normalized
    from bastion.inspect.engine import Inspector
    from bastion.inspect.request import InspectionRequest

_ENGINES = {level: Inspector(InspectConfig(paranoia=level)) for level in (1, 2, 3, 4)}
_CONTENT_TYPES = (
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=b",
    "text/xml",
    "text/plain",
    "",
)


def test_one_input(data: bytes) -> None:
    """One fuzz case: must return without raising."""
    provider = atheris.FuzzedDataProvider(data)
    level = provider.ConsumeIntInRange(1, 4)
    method = provider.PickValueInList(["GET", "POST", "PUT", "DELETE", "|GET", "get"])
    target = "/" + provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 256))
    content_type = provider.PickValueInList(list(_CONTENT_TYPES))
    headers: list[tuple[str, str]] = [("host", "fuzz.example")]
    if content_type:
        headers.append(("content-type", content_type))
    for _ in range(provider.ConsumeIntInRange(0, 4)):
        name = provider.PickValueInList(["user-agent", "referer", "cookie", "x-forwarded-for"])
        headers.append((name, provider.ConsumeUnicodeNoSurrogates(128)))
    body = provider.ConsumeBytes(provider.remaining_bytes())
    request = InspectionRequest(method, target, tuple(headers), body)
    verdict = _ENGINES[level].inspect(request)
    assert verdict.score >= 0
    value = Normalized(body.decode("utf-8", "surrogateescape"))
    for form in (value.decoded, value.unescaped, value.nfkc, value.sql, value.compact, value.path):
        assert isinstance(form, str)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
