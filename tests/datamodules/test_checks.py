"""Finiteness is checked after the cast to the cached dtype (float32), in every reader."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.checks import DataFormatError, finite_float32
from tests.datamodules.tiny_data import KINDS, tiny


def test_finite_float32_catches_float64_overflow_and_nan():
    a = np.zeros((3, 4))
    np.testing.assert_array_equal(finite_float32(a + 2.5, "f.npy", "k"), np.full((3, 4), 2.5, np.float32))
    assert finite_float32(a, "f.npy", "k").dtype == np.float32
    a[1, 2] = -1e300  # finite in float64, -Inf in float32
    with pytest.raises(DataFormatError, match=r"f.npy: key 'k' has 1 value\(s\) beyond the float32 range .* index \(1, 2\)"):
        finite_float32(a, "f.npy", "k")
    a[1, 2] = np.nan
    with pytest.raises(DataFormatError, match=r"f.npy: key 'k' has 1 NaN/Inf value\(s\), first at index \(1, 2\)"):
        finite_float32(a, "f.npy", "k")
    with pytest.raises(DataFormatError, match="dtype <U1, expected a numeric array"):
        finite_float32(np.array(["a"]), "f.npy", "k")


@pytest.mark.parametrize("kind", KINDS)
def test_1e300_in_a_float64_file_fails_naming_file_and_key(tmp_path, kind):
    data = tiny(kind, tmp_path)
    data.set_test_value(1e300)
    dm = data.datamodule()
    with pytest.raises(DataFormatError, match=rf"{data.test_file.name}: key '\w+' has 1 value\(s\) beyond the float32 range"):
        dm.setup("fit")
