"""``TORCH_LOGS=+mminference`` shows mmcompile's log lines (the rewrite's summary among them) through
PyTorch's log settings; without it mmcompile's loggers are left as Python's logging has them."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from mmcompile.torch_logs import LOG_NAME, wanted

SCRIPT = """
import torch, torch.nn.functional as F
q = torch.randn(1, 2, 8, 16)
torch.compile(lambda q: F.scaled_dot_product_attention(q, q, q, is_causal=True), backend="mminference",
              options={"debug_uncompiled": True})(q)
"""


def test_torch_logs_names_are_read_with_verbosity_marks():
    assert wanted("+mminference") and wanted("graph_breaks, -mminference") and wanted(LOG_NAME)
    assert not wanted("") and not wanted("dynamo,mminference_x")


TORCH_2_13 = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 13)


@pytest.mark.skipif(not TORCH_2_13, reason="older torch parses TORCH_LOGS before its entry points")
def test_torch_logs_mminference_shows_the_summary(tmp_path):
    env = dict(os.environ, TORCH_LOGS="+mminference,graph_breaks", TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mminference: 1 attention calls, 1 rewritten, 0 left: 100%" in done.stderr


def test_without_torch_logs_mmcompile_logs_propagate_as_usual():
    assert "TORCH_LOGS" not in os.environ or not wanted(os.environ["TORCH_LOGS"])
    assert logging.getLogger("mmcompile").propagate  # pytest's caplog and user handlers still see it
