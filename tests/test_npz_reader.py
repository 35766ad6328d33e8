"""protocols.npz reads what numpy writes, without `ast` (CPython 3.11's AST state races across threads)."""

from __future__ import annotations

import ast
import io
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tandem.protocols.npz import NpzFormatError, read_npz

_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="<"),
    hnp.floating_dtypes(endianness="="),
    hnp.floating_dtypes(endianness=">"),
    hnp.complex_number_dtypes(endianness="<"),
)


def _npz(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.lists(
        hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)), min_size=1, max_size=3
    ),
    fortran=st.booleans(),
    compressed=st.booleans(),
)
def test_reads_what_numpy_writes_for_any_numeric_array(arrays, fortran, compressed):
    named = {f"output/v/{i}": (np.asfortranarray(a) if fortran else a) for i, a in enumerate(arrays)}
    data = _npz(named, compressed)
    got = read_npz(data)
    with np.load(io.BytesIO(data), allow_pickle=False) as want:
        assert sorted(got) == sorted(want.files)
        for key, array in got.items():
            assert array.dtype == want[key].dtype and array.shape == want[key].shape
            np.testing.assert_array_equal(array, want[key])
            assert array.flags.writeable


def test_reads_without_ast_so_a_racing_ast_cannot_break_it(tmp_path, monkeypatch):
    path = tmp_path / "golden.npz"
    path.write_bytes(_npz({"input/x": np.arange(12, dtype=np.float32).reshape(3, 4)}, compressed=True))

    def broken(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch (before=1, after=3)")

    monkeypatch.setattr(ast, "literal_eval", broken)
    with pytest.raises(SystemError):  # numpy's own reader depends on ast; ours must not
        with np.load(path) as npz:
            npz["input/x"]
    np.testing.assert_array_equal(read_npz(path)["input/x"], np.arange(12, dtype=np.float32).reshape(3, 4))


def test_many_threads_read_at_once(tmp_path):
    arrays = {f"output/v/{i}": np.random.default_rng(i).random((16, 10)).astype(np.float32) for i in range(8)}
    path = tmp_path / "golden.npz"
    path.write_bytes(_npz(arrays, compressed=True))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                got = read_npz(path, ["output/v/3", "output/v/7"])
                np.testing.assert_array_equal(got["output/v/7"], arrays["output/v/7"])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


def test_refuses_what_is_not_a_plain_numeric_array_naming_the_member(tmp_path):
    with pytest.raises(NpzFormatError, match="words: dtype '<U1' is not numeric"):
        read_npz(_npz({"words": np.array(["a", "b"])}, compressed=False))
    objects = io.BytesIO()
    np.savez(objects, things=np.array([{"a": 1}], dtype=object))  # numpy pickles object arrays by default
    with pytest.raises(NpzFormatError, match=r"things: dtype .\|O. is not numeric"):
        read_npz(objects.getvalue())
    structured = np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])
    with pytest.raises(NpzFormatError, match="rows: header"):
        read_npz(_npz({"rows": structured}, compressed=False))
    with pytest.raises(NpzFormatError, match=r"no array 'output/v/9' \(has: input/x\)"):
        read_npz(_npz({"input/x": np.zeros(2)}, compressed=False), ["output/v/9"])
    with pytest.raises(NpzFormatError, match="cannot open as .npz"):
        read_npz(b"not a zip file")
    (tmp_path / "gone.npz").unlink(missing_ok=True)
    with pytest.raises(NpzFormatError, match="gone.npz: cannot open"):
        read_npz(tmp_path / "gone.npz")
    truncated = bytearray(_npz({"x": np.arange(100, dtype=np.int64)}, compressed=False))
    with pytest.raises(NpzFormatError):
        read_npz(bytes(truncated[:-200]))
