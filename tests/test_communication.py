"""The communication cost model of data-parallel RD (benchmarks/communication.py)."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from benchmarks import communication


def test_communication_bytes_counts_each_transfer():
  m, n, k, sizes = 64, 4, 3, [5, 7, 3]
  p = 5 * 7 + 7 + 7 * 3 + 3
  share = 4 * (n - 1) / n
  default = communication.communication_bytes(m, sizes, n)  # what rdescent does
  assert default.layer_inputs == share * m * 5 and default.cotangents == 0.0
  assert default.gram == 0.0 and default.residuals == share * m * k
  assert default.direction == 2 * share * p
  got = communication.communication_bytes(m, sizes, n, gathered="factors")
  assert got.layer_inputs == share * m * (5 + 7)
  assert got.cotangents == share * m * k * (7 + 3)
  assert got.residuals == share * m * k
  assert got.gram == 0.0
  assert got.direction == 2 * share * p
  assert got.total == pytest.approx(sum(got[:-1]))
  rows = communication.communication_bytes(
    m, sizes, n, gram_layout="row_blocks", gathered="factors"
  )
  assert rows.gram == share * (m * k) ** 2
  per_output = communication.communication_bytes(
    m, sizes, n, gram_layout="row_blocks", outputs="per_output"
  )
  assert per_output.gram == share * k * m * m
  jacobian = communication.communication_bytes(m, sizes, n, gathered="jacobian")
  assert jacobian.layer_inputs == 0.0 and jacobian.cotangents == share * m * k * p


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
  per_device=st.integers(1, 64),
  devices=st.integers(1, 64),
  sizes=st.lists(st.integers(1, 512), min_size=2, max_size=5),
  outputs=st.sampled_from(["full", "per_output"]),
  layout=st.sampled_from(["replicated", "row_blocks"]),
  gathered=st.sampled_from(["inputs", "factors", "jacobian"]),
)
def test_communication_bytes_scales_with_the_gathered_share(
  per_device, devices, sizes, outputs, layout, gathered
):
  m = per_device * devices
  got = communication.communication_bytes(
    m, sizes, devices, outputs=outputs, gram_layout=layout, gathered=gathered
  )
  if devices == 1:
    assert got.total == 0.0
    return
  # Every term is (n−1)/n times a volume that depends on m, k, widths only.
  # one example per device: the same volumes times (m−1)/m (here m ≥ devices ≥ 2).
  single = communication.communication_bytes(
    m, sizes, m, outputs=outputs, gram_layout=layout, gathered=gathered
  )
  np.testing.assert_allclose(
    np.array(got) * devices / (devices - 1), np.array(single) * m / (m - 1), rtol=1e-12
  )


def test_communication_bytes_rejects_bad_arguments():
  with pytest.raises(ValueError, match="divisible"):
    communication.communication_bytes(10, [3, 2], 4)
  with pytest.raises(ValueError, match="outputs"):
    communication.communication_bytes(8, [3, 2], 4, outputs="both")
  with pytest.raises(ValueError, match="gram_layout"):
    communication.communication_bytes(8, [3, 2], 4, gram_layout="ring")
