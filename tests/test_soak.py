"""The short form of `make soak`: mixed traffic with two Envoy workers."""
from __future__ import annotations

import soak


def test_short_soak_has_no_unexpected_errors_and_one_record_per_request(built, tmp_path):
    result = soak.soak(20, clients=6, workdir=tmp_path)
    print(result)
    assert result["unexpected"] == 0
    assert result["requests"] > 200
    assert result["audit_records"] == result["requests"]
    assert result["passed"], result
