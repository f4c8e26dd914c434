"""The cache serializer: what round-trips exactly, what is refused, and corrupt input."""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.cache.serial import SerializationError, Serializer

ROUND_TRIPS: list[tuple[str, Any]] = [
    ("none", None),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("negative", -17),
    ("int64_max", 2**63 - 1),
    ("uint64_max", 2**64 - 1),
    ("float", 3.25),
    ("empty_str", ""),
    ("unicode", "naïve ☃ \U0001f600"),
    ("nul_in_str", "a\x00b"),
    ("empty_bytes", b""),
    ("bytes", bytes(range(256))),
    ("empty_list", []),
    ("empty_dict", {}),
    ("empty_tuple", ()),
    ("nested_plain", {"a": [1, {"b": [None, "c"]}], "d": 1.5}),
    ("bytes_in_dict", {"body": b"\xff\x00", "status": 200}),
    ("bytes_in_list", [b"a", b"", b"bc"]),
    ("tuple_in_list", [(1, 2), ("a", b"b")]),
    ("headers_shape", {"headers": [(b"content-type", b"text/plain")], "body": b"x" * 10}),
    ("nested_tuples", ((1, (2, (3,))), [])),
    ("dict_nul_key", {"\x00b": [0, 1]}),
    ("dict_nul_key_nested", {"k": {"\x00t": [1]}, "b": b"z"}),
    ("marker_lookalike_plain", {"b": [0, 1], "t": [1]}),
]


@pytest.mark.parametrize(("name", "value"), ROUND_TRIPS, ids=[case[0] for case in ROUND_TRIPS])
@pytest.mark.parametrize("threshold", [1024, 0], ids=["plain", "compressed"])
def test_round_trip(name: str, value: Any, threshold: int) -> None:
    serializer = Serializer(compress_threshold=threshold)
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert type(back) is type(value)
    _same_types(back, value)


def _same_types(left: Any, right: Any) -> None:
    assert type(left) is type(right)
    if isinstance(left, dict):
        for key in left:
            _same_types(left[key], right[key])
    elif isinstance(left, list | tuple):
        for a, b in zip(left, right, strict=True):
            _same_types(a, b)


def test_bytearray_and_memoryview_come_back_as_bytes() -> None:
    serializer = Serializer()
    assert serializer.loads(serializer.dumps({"a": bytearray(b"xy")})) == {"a": b"xy"}
    assert serializer.loads(serializer.dumps([memoryview(b"z")])) == [b"z"]


@dataclasses.dataclass
class _Point:
    x: int


REFUSED: list[tuple[str, Any]] = [
    ("set", {1, 2}),
    ("frozenset_nested", {"a": frozenset()}),
    ("int_key", {1: "a"}),
    ("bytes_key", {b"a": 1}),
    ("nan", math.nan),
    ("inf_nested", [1.0, math.inf]),
    ("datetime", datetime.datetime(2026, 1, 1)),
    ("dataclass", _Point(1)),
    ("object", object()),
    ("big_int", 2**64),
    ("big_negative", -(2**63) - 1),
    ("big_int_nested_with_bytes", [b"a", 2**70]),
]


@pytest.mark.parametrize(("name", "value"), REFUSED, ids=[case[0] for case in REFUSED])
def test_values_that_would_change_type_are_refused(name: str, value: Any) -> None:
    with pytest.raises(SerializationError):
        Serializer().dumps(value)


def test_large_values_are_compressed() -> None:
    serializer = Serializer(compress_threshold=1024)
    small = serializer.dumps("a" * 100)
    large = serializer.dumps("a" * 100_000)
    assert small[0] & 0x80 == 0
    assert large[0] & 0x80
    assert len(large) < 1000
    assert serializer.loads(large) == "a" * 100_000


def _tree(json_text: str, blob: bytes = b"") -> bytes:
    body = json_text.encode()
    return b"\x03" + len(body).to_bytes(4, "big") + body + blob


CORRUPT: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("unknown_tag", b"\x09{}"),
    ("bad_json", b"\x01{"),
    ("bad_zstd", b"\x81not zstd"),
    ("tree_short_length", b"\x03\x00"),
    ("tree_length_past_end", b"\x03\x00\x00\x00\xff[]"),
    ("tree_bytes_out_of_range", b'\x03\x00\x00\x00\x0e{"\\u0000b":[0,9]}ab'),
    ("tree_bytes_bad_shape", b'\x03\x00\x00\x00\x0c{"\\u0000b":7}'),
    ("tree_bytes_float_offsets", _tree('{"\\u0000b":[0.5,1]}', b"ab")),
    ("tree_bytes_bool_offsets", _tree('{"\\u0000b":[true,true]}', b"ab")),
    ("tree_tuple_not_list", _tree('{"\\u0000t":5}')),
    ("tree_dict_int_key", _tree('{"\\u0000d":[[1,2]]}')),
    ("tree_dict_bad_pair", _tree('{"\\u0000d":[[1]]}')),
]


@pytest.mark.parametrize(("name", "data"), CORRUPT, ids=[case[0] for case in CORRUPT])
def test_corrupt_input_raises_serialization_error(name: str, data: bytes) -> None:
    with pytest.raises(SerializationError):
        Serializer().loads(data)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.binary()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, threshold=st.sampled_from([0, 64, 1024]))
def test_every_supported_value_round_trips_with_its_types(value: Any, threshold: int) -> None:
    serializer = Serializer(compress_threshold=threshold)
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    _same_types(back, value)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_decode_to_a_cacheable_value_or_raise_serialization_error(
    data: bytes,
) -> None:
    serializer = Serializer()
    try:
        value = serializer.loads(data)
    except SerializationError:
        return
    assert serializer.loads(serializer.dumps(value)) == value
