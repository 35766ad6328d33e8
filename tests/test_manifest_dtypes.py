"""The manifest can describe every tensor the v2 wire carries: its dtype list and the tensor codec's
standard datatypes name the same set, so no model the hub serves is unpublishable for its dtype."""

from __future__ import annotations

import pytest

from tandem.protocols.manifest import DTYPES, ManifestError, TensorSpec
from tandem.protocols.tensor_codec import STANDARD_DATATYPES, datatype_of


def test_every_v2_datatype_has_exactly_one_manifest_dtype():
    mapped = sorted(datatype_of(dtype) for dtype in DTYPES)
    assert mapped == sorted(STANDARD_DATATYPES)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_tensor_spec_of_each_dtype_loads(dtype):
    spec = TensorSpec.from_dict({"name": "x", "dtype": dtype, "shape": [-1, 4]}, "variants[0].inputs[0]")
    assert spec.dtype == dtype


def test_an_unknown_dtype_is_refused_by_name():
    with pytest.raises(ManifestError, match=r"inputs\[0\]\.dtype: 'complex64' is not one of"):
        TensorSpec.from_dict({"name": "x", "dtype": "complex64", "shape": [1]}, "inputs[0]")
