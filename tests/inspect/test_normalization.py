"""What holds of the lazily decoded forms the detectors read (``core.Normalized``), over the
values the location splitter yields.

- ``decoded`` undoes up to three layers of percent-encoding exactly, and is then a fixed point
  (decoding it again changes nothing); a fourth layer is left encoded, which is itself a signal.
- ``nfkc`` is a fixed point of its own normalisation, ``sql`` has neither repeated nor edge
  spaces, ``compact`` no ASCII whitespace (RE2's ``\\s`` is
  ``[\\t\\n\\f\\r ]``: other spaces such as U+00A0 or ``\\v`` stay), ``path`` no ``\\`` nor ``//``.
"""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.inspect.core import Normalized

# Text without the characters that start an escape, so a layer count is well defined; any
# Unicode otherwise, surrogates excluded (no request can carry them as text).
PLAIN = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="%+&\\"), max_size=80
)


def encode(text: str, layers: int) -> str:
    for _ in range(layers):
        text = quote(text, safe="")
    return text


@settings(max_examples=300)
@given(PLAIN, st.integers(0, 3))
def test_decoded_undoes_up_to_three_layers_and_is_then_stable(text: str, layers: int) -> None:
    decoded = Normalized(encode(text, layers)).decoded
    assert decoded == text
    assert Normalized(decoded).decoded == decoded


@given(st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=20))
def test_a_fourth_layer_stays_encoded(text: str) -> None:
    assert Normalized(encode(text, 4)).decoded == encode(text, 1)


@settings(max_examples=300)
@given(PLAIN)
def test_nfkc_is_a_fixed_point(text: str) -> None:
    once = Normalized(text).nfkc
    if not any(char in once for char in "%+&\\"):  # NFKC may itself produce escape starters
        assert Normalized(once).nfkc == once


@settings(max_examples=300)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=120))
def test_shapes_of_the_sql_compact_and_path_forms(text: str) -> None:
    value = Normalized(text.replace("%u", "").replace("\\u", "").replace("\\x", ""))
    try:
        sql, compact, path = value.sql, value.compact, value.path
    except UnicodeEncodeError:
        return  # an escape decoding to a lone surrogate: the engine fails closed on it
    assert "  " not in sql
    assert sql == sql.strip()
    assert not any(char in " \t\n\f\r" for char in compact)
    assert "\\" not in path
    assert "//" not in path
