"""Reading one lmms-eval request for ``c2f_llava`` (:mod:`lrs_plugin.harness.requests`): the device of each rank.

The request's image, image path and stop strings are exercised through the model class
(``tests/models/test_model_requests.py``, ``tests/models/test_model_stop_strings.py``).
"""

from __future__ import annotations

import pytest


class _FakeAccelerator:
    def __init__(self, device: str, num_processes: int, local_process_index: int) -> None:
        import torch

        self.device = torch.device(device)
        self.num_processes = num_processes
        self.local_process_index = local_process_index


@pytest.mark.parametrize(
    ("accelerator", "requested", "expected"),
    [
        (("cpu", 2, 1), None, "cpu"),  # ACCELERATE_USE_CPU / no GPU: gloo on the CPU
        (("cuda:1", 2, 1), None, "cuda:1"),
        (("cuda", 1, 0), None, "cuda:0"),
        (("cuda:1", 2, 1), "cuda", "cuda:1"),  # a bare --device cuda goes to the rank's GPU
        (("cuda:1", 2, 1), "cuda:0", "cuda:0"),  # an explicit index is the user's choice
        (("cpu", 1, 0), "cpu", "cpu"),
    ],
)
def test_rank_device(accelerator, requested, expected):
    from lrs_plugin.harness.requests import rank_device

    assert rank_device(_FakeAccelerator(*accelerator), requested) == expected
