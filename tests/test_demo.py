"""``make demo``'s job (``lightning_recon.demo``) end to end at a tiny size: fit, test, FBP and TV
rows in one table under the demo's ``out`` folder."""

from lightning_recon.demo import main as demo


def test_the_demo_fits_tests_and_tables_three_methods_in_its_out_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo config's out (outputs/demo) is relative
    rows = demo(["--data.init_args.image_size=32", "--data.init_args.num_angles=12", "--data.init_args.train_length=8",
                 "--data.init_args.val_length=4", "--data.init_args.test_length=4", "--data.init_args.cache_samples=false",
                 "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
                 "--trainer.logger=false"])  # (a disabled W&B run would leave W&B disabled for later tests)
    assert set(rows) == {"learned GD", "FBP", "TV"}
    assert all(0 < psnr < 60 for psnr in rows.values())
    table = (tmp_path / "outputs" / "demo" / "results" / "results.md").read_text()
    assert all(name in table for name in rows)
    assert (tmp_path / "outputs" / "demo" / "checkpoints" / "last.ckpt").exists()
    assert "learned GD − TV" in capsys.readouterr().out
