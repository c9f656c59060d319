"""The live view's content, the plain-line fallback, and the double Ctrl-C."""

from __future__ import annotations

import signal

import pytest
from rich.console import Console

from qlora4080.hardware import Hardware
from qlora4080.training.interrupts import InterruptGuard
from qlora4080.training.panel import TrainingView, format_line

RECORD = {"step": 8, "epoch": 0.1, "loss": 0.5, "learning_rate": 4.2e-4, "grad_norm": 0.4, "tokens_per_second": 98.0,
          "trained_tokens_per_second": 39.0, "eval_loss": 0.25}


def test_panel_shows_progress_metrics_and_memory():
    view = TrainingView("qlora4080 · test", Hardware(device="cpu"), live=False)
    view.start(total_steps=12)
    view.update({"step": 1, "epoch": 0.0, "loss": 1.0})
    view.update(dict(RECORD))
    view.advance(8)
    out = Console(record=True, width=120)
    out.print(view._render())
    text = out.export_text()
    assert "8/12" in text and "qlora4080 · test" in text
    assert "0.5000 (smoothed" in text and "4.20e-04" in text and "0.400" in text
    assert "39 trained / 98 total" in text and "0.2500 (ppl 1.28)" in text
    assert "RAM" in text


def test_smoothed_loss_is_bias_corrected():
    view = TrainingView("t", Hardware(device="cpu"), live=False)
    view.update({"loss": 2.0})
    assert view.smoothed == pytest.approx(2.0)  # not dragged toward zero or the start
    view.update({"loss": 1.0})
    assert 1.0 < view.smoothed < 2.0


def test_plain_line_has_every_metric():
    line = format_line({**RECORD, "memory": "RAM 2.00 GiB"}, 12)
    assert line.startswith("step 8/12 | epoch 0.10 | loss 0.5000")
    for piece in ("eval_loss 0.2500", "lr 4.20e-04", "grad 0.400", "98 tok/s", "39 trained tok/s", "RAM 2.00 GiB"):
        assert piece in line


def test_first_ctrl_c_requests_a_save_second_quits_at_once():
    guard = InterruptGuard()
    with guard:
        assert signal.getsignal(signal.SIGINT) == guard._handle
        guard._handle(signal.SIGINT, None)
        assert guard.requested
        with pytest.raises(KeyboardInterrupt):
            guard._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) != guard._handle  # the previous handler is back


def test_requested_stop_saves_and_stops_at_step_end():
    from transformers import TrainerControl

    guard = InterruptGuard()
    control = TrainerControl()
    guard.on_step_end(None, None, control)
    assert not control.should_save
    guard.requested = True
    guard.on_step_end(None, None, control)
    assert control.should_save and control.should_training_stop
