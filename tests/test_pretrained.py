"""The shipped weights load by name with ``weights_only=True`` and reproduce their documented result."""
from pathlib import Path

import pytest
import torch

from lightning_recon.cli import cli_main
from lightning_recon.pretrained import PRETRAINED
from lightning_recon.results import read_results_table

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_weights_reproduce_their_documented_psnr(name, tmp_path, monkeypatch):
    entry = PRETRAINED[name]
    checkpoint = torch.load(entry.path, weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["_class_path"].endswith(entry.method)
    assert "optimizer_states" not in checkpoint and entry.path.stat().st_size < 1_000_000
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli_main(["test", "--config", str(ROOT / entry.test_config), f"--ckpt_path={name}", "--trainer.logger=false",
              "--data.init_args.num_workers=0",
              "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
              f"--model.init_args.results_dir={tmp_path}", f"--model.init_args.method_name={name}"])
    psnr = float(read_results_table(tmp_path)[name]["psnr"])
    assert abs(psnr - entry.test_psnr) < 0.05, f"{name}: {psnr:.3f} dB against the documented {entry.test_psnr} dB"


def test_init_from_takes_a_shipped_checkpoint_by_name():
    from lightning_recon.methods import LearnedGD

    entry = PRETRAINED["ellipses-small-learned-gd"]
    saved = torch.load(entry.path, weights_only=True, map_location="cpu")
    settings = {k: saved["hyper_parameters"][k] for k in ("forward_model", "n_iter", "hidden_channels", "init")}
    model = LearnedGD(**settings, init_from="ellipses-small-learned-gd", results_dir=None)
    model.load_initial_weights()
    assert all(torch.equal(value, saved["state_dict"][key]) for key, value in model.state_dict().items()
               if key != "cached_operator_norm")


def test_a_weights_only_copy_drops_the_optimiser_and_predicts_as_the_run_s_checkpoint(tmp_path):
    from lightning_recon.checkpointing import weights_only_copy
    from lightning_recon.methods import LearnedGD
    from tests.test_predict import fitted

    checkpoint = fitted(tmp_path, ["--model=lightning_recon.methods.LearnedGD", "--model.init_args.n_iter=2",
                                   "--model.init_args.hidden_channels=4"])
    size = weights_only_copy(checkpoint, tmp_path / "shared.ckpt")
    assert size < checkpoint.stat().st_size
    copy = torch.load(tmp_path / "shared.ckpt", weights_only=True)
    assert "optimizer_states" not in copy and copy["global_step"] == 2
    original = LearnedGD.load_from_checkpoint(checkpoint, weights_only=True)
    shared = LearnedGD.load_from_checkpoint(tmp_path / "shared.ckpt", weights_only=True)
    for key, value in original.state_dict().items():
        assert torch.equal(value, shared.state_dict()[key]), key


def test_a_checkpoint_written_before_forward_model_was_named_so_still_loads(tmp_path, monkeypatch):
    """Checkpoints whose hyperparameters call the forward model ``geometry`` (earlier versions) load
    through ``load_from_checkpoint`` and ``train.py test --ckpt_path`` and score as the current file."""
    from lightning_recon.methods import LearnedGD

    entry = PRETRAINED["ellipses-small-learned-gd"]
    checkpoint = torch.load(entry.path, weights_only=True, map_location="cpu")
    hparams = checkpoint["hyper_parameters"]
    checkpoint["hyper_parameters"] = {("geometry" if key == "forward_model" else key): value
                                      for key, value in hparams.items()}
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model = LearnedGD.load_from_checkpoint(old, weights_only=True)
    current = LearnedGD.load_from_checkpoint(entry.path, weights_only=True)
    assert model.hparams.forward_model == current.hparams.forward_model and "geometry" not in model.hparams
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for name, path in (("current", entry.path), ("old", old)):
        cli_main(["test", "--config", str(ROOT / entry.test_config), f"--ckpt_path={path}", "--trainer.logger=false",
                  "--data.init_args.num_workers=0", "--data.init_args.test_length=4",
                  "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
                  f"--model.init_args.results_dir={tmp_path}", f"--model.init_args.method_name={name}"])
    table = read_results_table(tmp_path)
    assert float(table["old"]["psnr"]) == pytest.approx(float(table["current"]["psnr"]), abs=1e-6)
