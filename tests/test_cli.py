from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_recon.cli import cli_main
from lightning_recon.results import read_results_table
from lightning_recon.wandb_mode import default_wandb_mode

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = [
    "--data.init_args.preset=ellipses-small", "--data.init_args.image_size=32", "--data.init_args.num_angles=12",
    "--data.init_args.train_length=8", "--data.init_args.val_length=4", "--data.init_args.test_length=4",
    "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null",
    "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
]


SPARSE_CONFIGS = {"data/lightfield.yaml", "data/sparse_coding.yaml", "model/lista.yaml", "model/ista.yaml"}


def base_configs(group: str, path: str = ""):
    """Complete a partial config with small data, a model, the CPU trainer and the CSV logger
    (light-field partners for the sparse-recovery configs)."""
    sparse = path in SPARSE_CONFIGS
    defaults = {"data": "data/lightfield.yaml" if sparse else "data/ellipses-small.yaml",
                "model": "model/lista.yaml" if sparse else "model/fbp_unet.yaml",
                "trainer": "trainer/cpu.yaml", "logger": "logger/csv.yaml"}
    defaults.pop(group, None)
    return [arg for path in defaults.values() for arg in ("--config", str(CONFIGS / path))]


def file_data_flags(path: str, folder: Path):
    """Made files (reduced sizes) for the configs that read a user's data, as flags after the config."""
    from lightning_recon.physics import ParallelBeam2D

    from .made_data import LODOPAB_SMALL_FLAGS, make_image_folder, make_lodopab, make_pairs

    if "lodopab" in path:
        made = make_lodopab(folder, {"train": [2], "validation": [1], "test": [1]})
        return [f"--data.init_args.path={made}", *LODOPAB_SMALL_FLAGS]
    if path in ("data/images.yaml", "experiment/images_learned_gd_cpu.yaml"):
        return [f"--data.init_args.path={make_image_folder(folder, 6, size=24)}"]
    if path in ("data/scan.yaml", "experiment/scan_noise2inverse_cpu.yaml"):
        from lightning_recon.data.synthetic_scan import write_synthetic_scan

        write_synthetic_scan(folder / "scan.h5", slices=4, size=16, angles=24)
        return [f"--data.init_args.path={folder / 'scan.h5'}"]
    if path == "data/pairs.yaml":
        made = make_pairs(folder, 6, ParallelBeam2D((24, 24), num_angles=10))
        return [f"--data.init_args.path={made}", "--data.init_args.geometry.image_shape=[24, 24]",
                "--data.init_args.geometry.num_angles=10"]
    return []


@pytest.mark.parametrize("path", sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")))
def test_every_committed_config_parses_and_instantiates(path, tmp_path):
    group = path.split("/")[0]
    args = [] if group == "experiment" else base_configs(group, path)
    args += ["--config", str(CONFIGS / path), *file_data_flags(path, tmp_path / "data"),
             "--trainer.default_root_dir", str(tmp_path)]
    if group in ("experiment", "trainer"):
        args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                 "--trainer.precision=32-true", "--trainer.sync_batchnorm=false"]
    cli = cli_main(args, run=False)
    assert cli.model.hparams.forward_model == cli.datamodule.forward_model_dict
    assert cli.model.hparams.data_range == cli.datamodule.fixed_data_range  # the data module's range is linked


def test_print_config(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(CONFIGS / "experiment/ellipses30_learned_pd.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert "class_path: lightning_recon.methods.LearnedPD" in printed and "preset: ellipses-30" in printed


@pytest.mark.parametrize("model", ["fbp_unet", "learned_gd", "learned_pd"])
def test_fit_two_steps_then_test_writes_the_results_table(model, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = tmp_path / "results"
    args = ["--config", str(CONFIGS / f"model/{model}.yaml"), "--config", str(CONFIGS / "logger/csv.yaml"),
            *TINY, f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--model.init_args.results_dir={results}"]
    cli = cli_main(["fit", *args])
    checkpoints = list(Path(cli.trainer.log_dir).rglob("*.ckpt"))
    assert any(c.name == "last.ckpt" for c in checkpoints)
    last = next(c for c in checkpoints if c.name == "last.ckpt")
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["forward_model"]["image_shape"] == [32, 32]
    assert (Path(cli.trainer.log_dir) / "config.yaml").exists()
    assert list((Path(cli.trainer.log_dir) / "panels").glob("*.png"))
    recorded = (Path(cli.trainer.log_dir) / "config.yaml").read_text()
    tested = cli_main(["test", *args, f"--ckpt_path={last}"])
    assert not (Path(tested.trainer.log_dir) / "config.yaml").exists()  # test writes no run record
    assert (Path(cli.trainer.log_dir) / "config.yaml").read_text() == recorded
    table = (results / "results.md").read_text()
    assert cli.model.method_name in table and (results / "results.csv").exists()
    row = read_results_table(results)[cli.model.method_name]  # where the row comes from
    assert (row["data"], row["checkpoint"], row["step"]) == ("ellipses-small, 12 angles", "last.ckpt", "2")


def test_wandb_offline_run_logs_images_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = ["fit", "--config", str(CONFIGS / "model/fbp_unet.yaml"), "--config", str(CONFIGS / "logger/wandb.yaml"),
            *TINY, f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--model.init_args.results_dir={tmp_path / 'results'}"]
    cli_main(args)
    import wandb

    wandb.finish()  # Lightning keeps the run open for a later test(); closing it flushes the files
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    files = {p.relative_to(run_dirs[0]).as_posix() for p in run_dirs[0].rglob("*") if p.is_file()}
    assert any(f.startswith("files/media/images/val/panels") and f.endswith(".png") for f in files), files
    import time

    wanted = (b"lightning_recon.methods.FBPUNet", b"ellipses-small")
    deadline = time.monotonic() + 60  # W&B's service process writes the records after finish() returns
    while True:
        records = next(run_dirs[0].glob("run-*.wandb")).read_bytes()  # offline runs keep the config here
        if all(w in records for w in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(w in records for w in wanted)


def test_wandb_mode_defaults_to_offline_without_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    assert default_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert default_wandb_mode() == "disabled"


def test_ddp_spawn_two_cpu_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ["fit", "--config", str(CONFIGS / "model/learned_gd.yaml"), *TINY, "--trainer.devices=2",
            "--trainer.strategy=ddp_spawn", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
            "--checkpoint.dirpath", str(tmp_path / "ckpt"), f"--model.init_args.results_dir={tmp_path}"]
    cli = cli_main(args)
    assert cli.trainer.world_size == 2
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


@pytest.mark.parametrize("baseline,extra", [
    ("FBPBaseline", ["--model.init_args.frequency_scalings=[0.5,1.0]", "--model.init_args.filters=[Hann,Ram-Lak]"]),
    ("TVBaseline", ["--model.init_args.iterations=30", "--model.init_args.alphas=[0.1,3.0]"]),
])
def test_classical_baselines_tune_on_validation_and_join_the_table(baseline, extra, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = tmp_path / "results"
    cli = cli_main(["test", f"--model=lightning_recon.methods.{baseline}", *extra, *TINY, "--trainer.logger=false",
                    f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.results_dir={results}"])
    tuned = cli.model.hparams
    if baseline == "FBPBaseline":
        assert tuned.fbp_filter in ("Hann", "Ram-Lak") and tuned.fbp_frequency_scaling in (0.5, 1.0)
    else:
        assert tuned.alpha in (0.1, 3.0)
    assert cli.model.method_name in (results / "results.md").read_text()


def test_wandb_falls_back_to_offline_within_seconds_when_the_server_is_unreachable(monkeypatch):
    import time

    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # credentials present
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there (loopback only)
    for mode in (None, "online"):
        if mode:
            monkeypatch.setenv("WANDB_MODE", mode)
        else:
            monkeypatch.delenv("WANDB_MODE", raising=False)
        start = time.perf_counter()
        with pytest.warns(UserWarning, match="W&B server unreachable"):
            assert default_wandb_mode() == "offline"
        assert time.perf_counter() - start < 5
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert default_wandb_mode() == "offline"


def test_bf16_mixed_precision_trains_on_the_cpu_with_a_float32_operator(tmp_path, monkeypatch):
    """Autocast no longer reaches the ray transform's sparse products (they have no bf16 kernel); the
    fast CPU settings together: channels-last weights and AdamW's fused CPU kernel."""
    from lightning_recon.physics import ParallelBeam2D, RayTransform

    A = RayTransform(ParallelBeam2D((16, 16), num_angles=6))
    x = torch.rand(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = A(x)
    assert y.dtype == torch.float32 and torch.equal(y, A(x))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    from lightning_recon.methods import LearnedGD

    norms = []  # before each zero_grad: the gradient norm the previous step's optimizer used

    def record_norm(module, optimizer):
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        norms.extend([float(torch.linalg.vector_norm(torch.stack(grads)))] if grads else [])

    monkeypatch.setattr(LearnedGD, "on_before_zero_grad", record_norm)
    cli = cli_main(["fit", "--config", str(CONFIGS / "model/learned_gd.yaml"), *TINY, "--trainer.logger=false",
                    "--trainer.precision=bf16-mixed", f"--trainer.default_root_dir={tmp_path}",
                    "--model.init_args.results_dir=null", "--model.init_args.hidden_channels=8",
                    "--model.init_args.channels_last=true", "--trainer.gradient_clip_val=1e-6"])
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["val/psnr"])
    assert cli.trainer.optimizers[0].defaults["fused"] is True
    assert norms and 0 < norms[-1] <= 1e-6 * 1.001  # clipped before the fused step


class RecordRates(L.Callback):
    """The step and learning rate at the start of every training step (for the schedule test)."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, *args):
        self.seen.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))


def test_resuming_with_a_larger_max_steps_follows_the_longer_cosine(tmp_path, monkeypatch):
    """Trained to step 4 of 4 (rate 0), resumed to 8: the rate follows the 8-step cosine from step 4
    on and falls to 0 again; it never climbs the old cosine's next period."""
    import math

    monkeypatch.setenv("WANDB_MODE", "disabled")
    common = ["--config", str(CONFIGS / "model/fbp_unet.yaml"), *TINY, "--trainer.logger=false",
              "--model.init_args.channels=[4,4]", "--model.init_args.results_dir=null",
              f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
              "--trainer.val_check_interval=4"]
    cli_main(["fit", *common, "--trainer.max_steps=4"])
    resumed = cli_main(["fit", *common, "--trainer.max_steps=8", "--trainer.callbacks+=tests.test_cli.RecordRates",
                        f"--ckpt_path={tmp_path / 'ckpt' / 'last.ckpt'}"])
    (rates,) = [c for c in resumed.trainer.callbacks if isinstance(c, RecordRates)]
    lr = resumed.model.hparams.lr
    assert [step for step, _ in rates.seen] == [4, 5, 6, 7]
    for step, rate in rates.seen:
        assert rate == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * step / 8)), rel=1e-6)


def test_a_run_shorter_than_its_validation_interval_still_validates_at_its_end(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = cli_main(["fit", "--config", str(CONFIGS / "model/fbp_unet.yaml"), *TINY, "--trainer.logger=false",
                    "--model.init_args.channels=[4,4]", "--model.init_args.results_dir=null",
                    "--trainer.max_steps=3", "--trainer.val_check_interval=500",
                    f"--trainer.default_root_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}"])
    assert cli.trainer.global_step == 3 and "val/psnr" in cli.trainer.callback_metrics
    assert cli.trainer.checkpoint_callback.best_model_path  # a best checkpoint by val/psnr exists
