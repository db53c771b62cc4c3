"""Light-field model, dictionaries, sparse data, (F)ISTA and LISTA."""
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lightning_recon.cli import cli_main
from lightning_recon.data import NeuronVolumeDataset, SparseCodingDataModule, SparseCodingDataset
from lightning_recon.methods import ISTABaseline, LearnedISTA
from lightning_recon.metrics import detection_scores, find_peaks, per_sample_nmse_db
from lightning_recon.nets import LISTA
from lightning_recon.physics import (ConvolutionalDictionary, LightFieldGeometry, LightFieldModel, MatrixOperator,
                                     SparseCodingProblem, operator_from_dict)
from lightning_recon.physics.lightfield import simple_psf_stack
from lightning_recon.solvers import ista

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_LF = dict(num_lenslets=6, lenslet_size=3, num_depths=3, psf_radius=1)


def test_psf_stack_has_unit_sums_and_spreads_with_defocus():
    geometry = LightFieldGeometry(num_depths=5, lenslet_size=5, psf_radius=2)
    psf = simple_psf_stack(geometry)
    assert psf.shape == (5, 5, 5, 25, 25) and (psf >= 0).all()
    torch.testing.assert_close(psf.sum(dim=(-2, -1)), torch.ones(5, 5, 5))
    support = (psf > 1e-3).flatten(3).sum(-1).float().mean(dim=(1, 2))  # pixels lit, per depth
    assert support[2] < support[0] and support[2] < support[4]  # in focus is the most compact
    torch.testing.assert_close(support[0], support[4])  # ± z blur alike


def test_light_field_is_periodically_shift_invariant():
    op = LightFieldModel(LightFieldGeometry(**TINY_LF))
    s = op.geometry.lenslet_size
    point = torch.zeros(1, *op.domain_shape)
    point[0, 0, 7, 7] = 1.0
    moved = torch.roll(point, shifts=(s, s), dims=(-2, -1))
    torch.testing.assert_close(op(moved), torch.roll(op(point), shifts=(s, s), dims=(-2, -1)))
    nudged = torch.roll(point, shifts=1, dims=-1)  # within the lenslet: a different PSF, not a shift
    assert not torch.allclose(op(nudged), torch.roll(op(point), shifts=1, dims=-1), atol=1e-4)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5"])
def test_psf_stack_loads_from_a_file(tmp_path, suffix):
    geometry = LightFieldGeometry(**TINY_LF)
    psf = torch.rand(3, 3, 3, 9, 9).numpy()
    path = tmp_path / f"psf{suffix}"
    if suffix == ".npy":
        np.save(path, psf)
    elif suffix == ".npz":
        np.savez(path, psf=psf)
    else:
        with h5py.File(path, "w") as handle:
            handle["psf"] = psf
    op = LightFieldModel(geometry.replace(psf_file=str(path)))
    torch.testing.assert_close(op.weight, torch.from_numpy(psf).reshape(-1, 1, 9, 9))
    assert op.adjointness_error() < 1e-5


def test_bad_light_field_input_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="lenslet_size"):
        LightFieldGeometry(lenslet_size=0)
    with pytest.raises(ValueError, match="blur_in_focus"):
        LightFieldGeometry(blur_in_focus=0.0)
    with pytest.raises(FileNotFoundError):
        LightFieldModel(LightFieldGeometry(**TINY_LF, psf_file=str(tmp_path / "missing.npy")))
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 3, 9, 9)))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3, 9, 9\)"):
        LightFieldModel(LightFieldGeometry(**TINY_LF, psf_file=str(tmp_path / "wrong.npy")))
    np.savez(tmp_path / "nokey.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="no array named 'psf'"):
        LightFieldModel(LightFieldGeometry(**TINY_LF, psf_file=str(tmp_path / "nokey.npz")))
    op = LightFieldModel(LightFieldGeometry(**TINY_LF))
    with pytest.raises(ValueError, match="volume of shape"):
        op(torch.zeros(1, 2, 18, 18))
    with pytest.raises(ValueError, match="unknown type .LightField."):
        operator_from_dict({"type": "LightField", "num_lenslets": 3})


def test_geometry_round_trips_through_plain_dicts():
    geometry = LightFieldGeometry(**TINY_LF)
    plain = geometry.to_dict()
    assert LightFieldGeometry.from_dict(plain) == geometry
    assert isinstance(operator_from_dict(plain), LightFieldModel)
    assert all(isinstance(v, (int, float, str, type(None))) for v in plain.values())


@pytest.mark.parametrize("dictionary", ["gaussian", "convolutional"])
def test_dictionaries_build_from_their_problem(dictionary):
    problem = SparseCodingProblem(dictionary=dictionary, m=20, n=40, image_size=16, num_filters=3, filter_size=5)
    op = problem.build_operator()
    assert op.adjointness_error() < 1e-5
    if dictionary == "gaussian":
        assert isinstance(op, MatrixOperator)
        assert op.operator_norm() == pytest.approx(float(torch.linalg.matrix_norm(op.weight, 2)), rel=1e-3)
    else:
        assert isinstance(op, ConvolutionalDictionary) and op.domain_shape == (3, 16, 16)


def test_neuron_volumes_are_deterministic_and_sparse():
    dataset = NeuronVolumeDataset(TINY_LF, length=4, seed=3, num_neurons=(2, 4), labelled_fraction=0.5)
    first, again, other = dataset[1], dataset[1], NeuronVolumeDataset(TINY_LF, length=4, seed=4)[1]
    torch.testing.assert_close(first["ground_truth"], again["ground_truth"])
    torch.testing.assert_close(first["measurement"], again["measurement"])
    assert not torch.equal(first["ground_truth"], other["ground_truth"])
    volume = first["ground_truth"]
    assert volume.shape == (3, 18, 18) and volume.min() >= 0 and volume.max() <= 1
    assert (volume > 0.1).float().mean() < 0.2
    n = first["num_neurons"]
    assert 2 <= n <= 4 and (first["centres"][:n] >= 0).all() and (first["centres"][n:] == -1).all()
    assert [dataset[i]["labelled"] for i in range(4)] == [True, True, False, False]
    clone = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(clone[1]["measurement"], first["measurement"])
    with pytest.raises(IndexError):
        dataset[4]


def test_sparse_codes_have_the_requested_sparsity():
    problem = SparseCodingProblem(m=50, n=100, sparsity=0.1, noise_std=0.0)
    items = [SparseCodingDataset(problem, 64, seed=0)[i] for i in range(64)]
    codes = torch.stack([item["ground_truth"] for item in items])
    assert 0.07 < (codes != 0).float().mean() < 0.13
    op = problem.build_operator()
    torch.testing.assert_close(op(codes), torch.stack([item["measurement"] for item in items]))


def test_lista_at_initialisation_is_ista():
    op = LightFieldModel(LightFieldGeometry(**TINY_LF))
    y = op(torch.rand(2, *op.domain_shape) * (torch.rand(2, *op.domain_shape) > 0.9))
    for tied in (True, False):
        net = LISTA(op, num_layers=6, tied=tied, sparsity_weight=0.01)
        with torch.no_grad():
            torch.testing.assert_close(net(y), ista(op, y, 0.01, 6), rtol=1e-4, atol=1e-6)
        assert len(net(y, return_all=True)) == 6 and net(y, num_layers=2).shape == (2, *op.domain_shape)
    assert len(LISTA(op, num_layers=6, tied=True).back_projections) == 1
    assert LISTA(op, num_layers=6).thresholds.shape == (6, 3)  # one per depth and layer
    with pytest.raises(ValueError, match="num_layers"):
        net(y, num_layers=7)


def test_fista_converges_faster_than_ista():
    problem = SparseCodingProblem(m=60, n=120, sparsity=0.05, noise_std=0.0)
    op = problem.build_operator()
    x = torch.stack([SparseCodingDataset(problem, 8)[i]["ground_truth"] for i in range(8)])
    y = op(x)
    slow, fast = (float(per_sample_nmse_db(ista(op, y, 0.001, 100, nonnegative=False, accelerated=a), x).mean()) for a in (False, True))
    assert fast < slow - 3


def test_detection_metrics():
    volume = torch.zeros(3, 10, 10)
    volume[1, 2, 3], volume[2, 7, 7], volume[0, 5, 5] = 1.0, 0.8, 0.1
    peaks = find_peaks(volume, threshold=0.5)
    assert peaks.tolist() == [[1.0, 2.0, 3.0], [2.0, 7.0, 7.0]]
    true = torch.tensor([[1.0, 2.5, 3.0], [0.0, 0.0, 0.0]])
    assert detection_scores(peaks, true, tolerance=1.0) == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert detection_scores(peaks, peaks)["f1"] == 1.0
    assert detection_scores(peaks[:0], true)["f1"] == 0.0
    x = torch.ones(2, 4)
    torch.testing.assert_close(per_sample_nmse_db(0.9 * x, x), torch.full((2,), -20.0))


def test_learned_ista_beats_its_ista_initialisation(tmp_path):
    import lightning as L

    data = SparseCodingDataModule(problem=dict(m=20, n=40, sparsity=0.1, noise_std=0.01), train_length=1024,
                                  val_length=64, test_length=64, batch_size=64)
    model = LearnedISTA(data.forward_model_dict, num_layers=4, nonnegative=False, sparsity_weight=0.05, lr=3e-3,
                        results_dir=str(tmp_path / "results"))
    trainer = L.Trainer(max_steps=150, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    before = trainer.test(model, data, verbose=False)[0]["test/nmse"]
    trainer.fit(model, data)
    after = trainer.test(model, data, verbose=False)[0]["test/nmse"]
    assert after < before - 3, (before, after)


def test_loss_weights_are_checked():
    with pytest.raises(ValueError, match="at least one"):
        LearnedISTA(LightFieldGeometry(**TINY_LF).to_dict(), supervised_weight=0.0, consistency_weight=0.0)


def _tiny_lightfield_args(tmp_path, config="experiment/lightfield_lista.yaml"):
    return ["--config", str(CONFIGS / config),
            "--data.init_args.geometry.num_lenslets=6", "--data.init_args.geometry.lenslet_size=3",
            "--data.init_args.geometry.num_depths=3", "--data.init_args.geometry.psf_radius=1",
            "--data.init_args.train_length=8", "--data.init_args.val_length=4", "--data.init_args.test_length=4",
            "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
            "--trainer.accelerator=cpu", "--trainer.max_steps=4", "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}",
            f"--model.init_args.results_dir={tmp_path / 'results'}", f"--out={tmp_path}"]


def test_cli_fits_lista_on_light_fields_then_tests_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = _tiny_lightfield_args(tmp_path)
    cli = cli_main(["fit", *args, "--model.init_args.num_layers=3"])
    assert cli.model.hparams.forward_model["num_lenslets"] == 6
    log_dir = Path(cli.trainer.log_dir)
    assert list((log_dir / "panels").glob("projections-*.png"))
    last = tmp_path / "checkpoints" / "last.ckpt"  # --out: the checkpoints' folder
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert any(key.startswith("net.back_projections") for key in state["state_dict"])
    tested = cli_main(["test", *args, "--model.init_args.num_layers=3", f"--ckpt_path={last}"])
    assert set(tested.model.test_results) >= {"nmse", "f1", "seconds_per_image"}
    assert "| NMSE (dB) | F1 | s/image | images |" in (tmp_path / "results" / "results.md").read_text()


def test_cli_mixed_regime_and_ista_baseline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = cli_main(["fit", *_tiny_lightfield_args(tmp_path, "experiment/lightfield_lista_mixed.yaml"),
                    "--model.init_args.num_layers=2"])
    assert cli.datamodule.dataset("train").num_labelled == 1  # 10 % of 8 samples
    metrics = cli.trainer.logged_metrics
    assert "train/consistency" in metrics and torch.isfinite(metrics["train/loss"])
    baseline = cli_main(["test", *_tiny_lightfield_args(tmp_path), "--model=lightning_recon.methods.ISTABaseline",
                         "--model.init_args.iterations=20", "--model.init_args.sparsity_weights=[0.001,0.01]"])
    assert isinstance(baseline.model, ISTABaseline)
    assert baseline.model.hparams.sparsity_weight in (0.001, 0.01)
    assert np.isfinite(baseline.model.test_results["nmse"])


def test_wandb_offline_run_logs_projection_panels(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = [arg for arg in _tiny_lightfield_args(tmp_path) if not arg.startswith("--trainer.logger")]
    cli_main(["fit", *args, "--model.init_args.num_layers=2", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    import wandb

    wandb.finish()
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert any(f.startswith("files/media/images/val/projections") and f.endswith(".png") for f in files), files
