"""Training pairs simulated on the device agree with the CPU path's samples of the same indices."""
import pytest
import torch

from lightning_recon.data import SimulatedCTDataModule
from lightning_recon.data.device_simulation import DeviceEllipsesSimulator


def _compare(device: str):
    data = SimulatedCTDataModule("ellipses-small", image_size=32, train_length=16, simulate_on="device", batch_size=4)
    indices = torch.tensor([3, 0, 11, 7])
    batch = data.transfer_batch_to_device(indices, torch.device(device), 0)
    clean = SimulatedCTDataModule("ellipses-small", image_size=32, train_length=16, noise="none").dataset("train")
    reference = [clean[int(i)] for i in indices]
    truth = torch.stack([r["ground_truth"] for r in reference]).to(device)
    noiseless = torch.stack([r["measurement"] for r in reference]).to(device)
    # same phantoms except pixels whose centre lies on an ellipse border (float rounding; on a GPU
    # fused multiply-adds round differently, and a flipped pixel may move an image's normalisation)
    assert float((batch["ground_truth"] - truth).abs().mean()) < 5e-3
    # the noise is the preset's 2.5 % of mean |y| around the same noiseless sinogram
    level = (batch["measurement"] - noiseless).flatten(1).std(dim=1) / noiseless.flatten(1).abs().mean(dim=1)
    assert torch.all((level > 0.02) & (level < 0.03))
    assert batch["fbp"].shape == truth.shape and torch.equal(batch["index"].cpu(), indices)
    again = data.transfer_batch_to_device(indices, torch.device(device), 0)
    # noise seeded by (seed, index); cuSPARSE's products are not bitwise deterministic on a GPU
    torch.testing.assert_close(again["measurement"], batch["measurement"], rtol=1e-5, atol=1e-4)


def test_device_simulation_matches_cpu_path_on_cpu():
    _compare("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_simulation_matches_cpu_path_on_gpu():
    _compare("cuda")


def test_index_loader_and_unsupported_settings():
    data = SimulatedCTDataModule("ellipses-small", image_size=32, train_length=10, simulate_on="device", batch_size=4)
    seen = torch.cat(list(data.train_dataloader()))
    assert sorted(seen.tolist()) == list(range(10))  # every index once per epoch, shuffled
    val_batch = next(iter(data.val_dataloader()))
    assert isinstance(data.transfer_batch_to_device(val_batch, torch.device("cpu"), 0), dict)  # CPU path
    with pytest.raises(ValueError, match="disk"):
        SimulatedCTDataModule("ellipses-small", image_size=32, simulate_on="device", disk_support=True)
    with pytest.raises(ValueError, match="simulate_on"):
        SimulatedCTDataModule("ellipses-small", simulate_on="tpu")
    with pytest.raises(ValueError, match="Gaussian"):
        DeviceEllipsesSimulator(SimulatedCTDataModule("ellipses-small", noise="poisson").dataset("train"))


def test_cosine_time_schedule_anneals_over_the_time_budget(tmp_path):
    import lightning as L

    from lightning_recon.methods import FBPUNet

    data = SimulatedCTDataModule("ellipses-small", image_size=32, num_angles=12, train_length=8, val_length=2,
                                 test_length=2, batch_size=4, simulate_on="device")
    model = FBPUNet(forward_model=data.forward_model_dict, channels=[4, 8], scheduler="cosine-time", results_dir=None)
    trainer = L.Trainer(max_time={"seconds": 3}, max_epochs=1000, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, data)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert trainer.global_step > 2 and lr < 0.2 * model.hparams.lr  # annealed by the end of the budget
    with pytest.raises(ValueError, match="max_time"):
        L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  limit_val_batches=0, default_root_dir=tmp_path).fit(
            FBPUNet(forward_model=data.forward_model_dict, channels=[4, 8], scheduler="cosine-time", results_dir=None), data)
