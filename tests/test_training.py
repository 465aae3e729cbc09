"""vqfast.training and vqfast.checkpoint: resume exactness, the early-stopping rule,
atomic safetensors checkpoints and clear errors for wrong files."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from vqfast import checkpoint, files
from vqfast.checkpoint import CheckpointError, load_model, save_model
from vqfast.data import ProceduralDefects
from vqfast.models import VQVAE, VQVAEConfig
from vqfast.training import EarlyStopping, RunExistsError, TrainConfig, Trainer

TINY = VQVAEConfig(in_channels=3, hidden=8, res_blocks=1, num_codes=8, code_dim=4, downsamples=2)


def _trainer(out_dir, epochs, val=None, **kw):
    torch.manual_seed(0)
    config = TrainConfig(epochs=epochs, batch_size=4, lr=1e-3, lr_gamma=0.9, grad_clip=1.0, **kw)
    return Trainer(VQVAE(TINY), ProceduralDefects(10, 0, size=16), val, config, out_dir=out_dir, progress=False)


def test_resume_continues_exactly(tmp_path):
    straight = _trainer(tmp_path / "a", 4)
    straight.fit()
    first = _trainer(tmp_path / "b", 2)
    first.fit()
    resumed = _trainer(tmp_path / "b", 4)
    torch.manual_seed(123)  # the checkpoint's RNG state must win over whatever came before
    resumed.fit(resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.step == resumed.step == 12
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    for t in (straight, resumed):
        assert t.optimizers["gen"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.9**4)


def test_resume_refuses_another_model_config(tmp_path):
    _trainer(tmp_path, 1).fit()
    other = Trainer(VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=16, code_dim=4, downsamples=2)),
                    ProceduralDefects(4, 0, size=16), config=TrainConfig(epochs=2), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="checkpoint.safetensors: was written for another model config"):
        other.fit(resume=True)


def test_resume_with_nothing_to_resume_starts_fresh_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint.safetensors to resume from; starting a fresh run"):
        history = _trainer(tmp_path / "new", 2).fit(resume=True)
    assert [r["epoch"] for r in history] == [1, 2]
    straight = _trainer(tmp_path / "ref", 2)
    straight.fit()
    assert [r["train"] for r in history] == [r["train"] for r in straight.history]


def test_fit_refuses_a_folder_holding_a_run(tmp_path):
    _trainer(tmp_path, 2).fit()
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match=f"{tmp_path} already holds a training run .*resume=True.*"
                                             "overwrite=True.*another out_dir"):
        _trainer(tmp_path, 2).fit()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before  # untouched
    _trainer(tmp_path, 2).fit(overwrite=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    with pytest.raises(ValueError, match="exclude each other"):
        _trainer(tmp_path, 2).fit(resume=True, overwrite=True)


def test_load_model_reads_the_trainers_checkpoint_too(tmp_path):
    trainer = _trainer(tmp_path, 1)
    trainer.fit()
    for name in ("model.safetensors", "checkpoint.safetensors"):
        model = load_model(tmp_path / name, expected="VQVAE")
        a, b = model.state_dict(), trainer.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].cpu()) for k in a)


def test_adam_betas_reach_the_optimisers():
    trainer = _trainer(None, 1, betas=(0.5, 0.9))
    assert trainer.optimizers["gen"].param_groups[0]["betas"] == (0.5, 0.9)
    assert _trainer(None, 1).optimizers["gen"].param_groups[0]["betas"] == (0.9, 0.999)


def test_early_stopping_rule():
    rule = EarlyStopping(patience=2)
    assert [rule.update(1.0, v) for v in (1.5, 1.0, 0.5, 2.0, 3.0)] == [False, False, False, False, True]
    assert rule.exceeded == 3


def test_trainer_stops_on_the_rule(tmp_path):
    # Validation images of another scale: their loss exceeds the training loss at every check.
    val = [{"image": torch.full((3, 16, 16), 5.0)}] * 4
    trainer = _trainer(tmp_path, 50, val=val, patience=1, check_every=2)
    history = trainer.fit()
    assert len(history) == 4 and history[-1]["stopped"] == "validation loss exceeded training loss 2 times"
    assert [r["val"] is not None for r in history] == [False, True, False, True]


def test_time_budget_and_non_finite_loss(tmp_path):
    history = _trainer(tmp_path / "t", 50, max_minutes=0.0).fit()
    assert len(history) == 1 and "time budget" in history[-1]["stopped"]
    assert history[-1]["step"] == 1  # within one step of the budget, not at the epoch's end (3 steps)
    bad = _trainer(None, 2)
    bad.loss_fn = lambda m, x: {"loss": m.training_loss(x)["loss"] * float("nan")}
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1, step 0"):
        bad.fit()


def test_model_checkpoint_round_trip(tmp_path):
    model = VQVAE(TINY).train()
    model(torch.rand(2, 3, 16, 16))  # initialises the codebook and moves the EMA buffers
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors", expected="VQVAE")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.eval().reconstruct(x), loaded.eval().reconstruct(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_model(VQVAE(TINY), path)
    before = path.read_bytes()

    real_fdopen = os.fdopen

    def broken(fd, mode):  # the temporary file gets half its bytes, then the disk is full
        with real_fdopen(fd, mode) as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fdopen", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(VQVAE(TINY), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_wrong_checkpoints_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="absent.safetensors: checkpoint not found"):
        load_model(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x03}q\x00.")  # a pickle, which is never unpickled
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable safetensors file"):
        load_model(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="foreign.safetensors: not a vqfast checkpoint"):
        load_model(foreign)
    ok = tmp_path / "ok.safetensors"
    save_model(VQVAE(TINY), ok)
    with pytest.raises(CheckpointError, match="ok.safetensors: holds a VQVAE, not a VQGAN"):
        load_model(ok, expected="VQGAN")
    tensors, meta = checkpoint.read(ok)
    del tensors["vq.codebook"]
    checkpoint.write_atomic(tmp_path / "cut.safetensors", tensors, {"config": meta["config"]})
    with pytest.raises(CheckpointError, match="cut.safetensors: weights do not fit VQVAE"):
        load_model(tmp_path / "cut.safetensors")


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    """A run that its time budget (or early stopping) ended stays as it is on resume."""
    first = _trainer(tmp_path, 50, max_minutes=0.0).fit()
    assert len(first) == 1 and first[-1]["stopped"].startswith("time budget")
    again = _trainer(tmp_path, 50, max_minutes=0.0).fit(resume=True)
    assert len(again) == 1 and again[-1]["step"] == first[-1]["step"]


def test_cuda_rng_states_restore_in_device_order():
    from vqfast.training import cuda_rng_states

    tensors = {f"rng.cuda.{i}": torch.tensor([i]) for i in (0, 2, 10, 1, 11, 3)}
    assert [int(t) for t in cuda_rng_states(tensors)] == [0, 1, 2, 3, 10, 11]
