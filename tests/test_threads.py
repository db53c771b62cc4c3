"""The thread policy (lightning_recon/threads.py): explicit setting > OMP_NUM_THREADS > free cores
(affinity less the 1-minute load average, at least 1); OMP_WAIT_POLICY=PASSIVE when unset and
there would be more threads than free cores."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_recon import threads


@pytest.fixture(autouse=True)
def machine(monkeypatch):
    """A fake machine: 8 cores, this process allowed on 4 of them, idle; no OMP_* settings.
    Tests change ``machine["load"]`` / ``machine["affinity"]``; torch's thread count is restored."""
    state = {"cpu_count": 8, "affinity": {0, 1, 2, 3}, "load": 0.0}
    monkeypatch.setattr(os, "cpu_count", lambda: state["cpu_count"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(state["affinity"]), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.setenv(key, "")  # recorded, so teardown restores the variable however a test changed it
        monkeypatch.delenv(key)
    before = torch.get_num_threads()
    yield state
    torch.set_num_threads(before)


@pytest.mark.parametrize("load,expected", [
    (0.0, 4),    # idle machine: every core of the affinity
    (3.0, 4),    # 5 of 8 idle, but only 4 usable
    (5.0, 3),    # 3 idle
    (5.6, 2),    # 2.4 idle: a core counts when more than half idle
    (5.4, 3),    # 2.6 idle
    (7.9, 1),    # all busy: still one
    (40.0, 1),   # overloaded
])
def test_free_cores_are_the_affinity_less_the_load(machine, load, expected):
    machine["load"] = load
    assert threads.choose_threads() == expected


def test_affinity_limits_and_its_absence_falls_back_to_cpu_count(machine, monkeypatch):
    machine["affinity"] = {5}
    assert threads.choose_threads() == 1
    monkeypatch.delattr(os, "sched_getaffinity")
    assert threads.choose_threads() == 8
    monkeypatch.setattr(os, "getloadavg", lambda: (_ for _ in ()).throw(OSError("no load average")))
    assert threads.choose_threads() == 8  # no load figure: taken as idle


def test_omp_num_threads_wins_over_the_machine(machine, monkeypatch):
    machine["load"] = 7.9
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert threads.choose_threads() == 6  # even above the free or usable cores: it was asked for
    monkeypatch.setenv("OMP_NUM_THREADS", "3,2")  # nested list: the outer level
    assert threads.choose_threads() == 3
    for unusable in ("", "abc", "0", "-2"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert threads.choose_threads() == 1  # ignored: the machine's rule


def test_an_explicit_setting_wins_over_everything(machine, monkeypatch):
    machine["load"] = 7.9
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert threads.choose_threads(2) == 2
    for wrong in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="positive integer"):
            threads.choose_threads(wrong)


def test_apply_sets_torch_threads_and_leaves_room_for_workers(machine, monkeypatch):
    machine["load"] = 1.0  # 7 idle, 4 usable
    assert threads.apply_thread_policy() == 4 == torch.get_num_threads()
    assert threads.apply_thread_policy(num_workers=1) == 3 == torch.get_num_threads()
    assert threads.apply_thread_policy(num_workers=10) == 1 == torch.get_num_threads()
    assert threads.apply_thread_policy(2, num_workers=10) == 2  # explicit: taken as it is
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.apply_thread_policy(num_workers=2) == 3 == torch.get_num_threads()
    with pytest.raises(ValueError, match="num_workers"):
        threads.apply_thread_policy(num_workers=-1)


def test_passive_waiting_only_where_threads_would_outnumber_the_free_cores(machine, monkeypatch):
    threads.apply_thread_policy(4)  # 4 free cores of 4: the runtime's default waiting stays
    assert "OMP_WAIT_POLICY" not in os.environ
    assert threads.prefer_passive_waiting() is False  # the automatic choice: one thread per free core
    machine["load"] = 7.0  # one core free
    assert threads.prefer_passive_waiting(1) is False and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # more threads than free cores
    assert threads.prefer_passive_waiting() is True and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's setting is kept
    threads.apply_thread_policy(3)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("argv,expected", [
    (["fit", "--threads", "2"], 2), (["--threads=3", "--trainer.max_steps=5"], 3), (["--threads", "1", "--threads=4"], 4),
    (["fit", "--config", "x.yaml"], None), (["--threads", "zero"], None), (["--threads=0"], None), (["--threads"], None),
])
def test_the_threads_argument_is_read_before_the_parser(argv, expected):
    assert threads.threads_argument(argv) == expected


def test_wait_policy_reaches_openmp_when_applied_before_torch_is_imported():
    """libgomp reads its environment once, while ``import torch`` loads it: with more threads asked
    for than the machine has cores, the policy applied first makes its spin count (shown by
    ``OMP_DISPLAY_ENV=VERBOSE``) 0; with the automatic choice the default spin count stays."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(OMP_DISPLAY_ENV="VERBOSE")
    code = ("import sys; from lightning_recon.threads import apply_thread_policy; "
            "assert 'torch' not in sys.modules; print('threads', apply_thread_policy())")
    oversubscribed = "256"  # more than the cores of any machine that runs this (the fixture fakes os's figures)
    runs = {}
    for name, extra in (("oversubscribed", {"OMP_NUM_THREADS": oversubscribed}), ("automatic", {})):
        runs[name] = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,
                                    text=True, timeout=120)
        assert runs[name].returncode == 0, runs[name].stderr
    assert f"threads {oversubscribed}" in runs["oversubscribed"].stdout
    if "GOMP_SPINCOUNT" not in runs["oversubscribed"].stderr:
        pytest.skip("torch's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV)")
    assert "GOMP_SPINCOUNT = '0'" in runs["oversubscribed"].stderr
    assert "GOMP_SPINCOUNT = '0'" not in runs["automatic"].stderr


def test_train_py_applies_the_thread_policy_and_takes_threads(monkeypatch, capsys):
    import torch

    from lightning_recon.cli import cli_main

    config = ["--config", str(Path(__file__).resolve().parents[1] / "configs/experiment/demo_cpu.yaml")]
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        cli_main([*config, "--threads", "1"], run=False)  # the setting wins over OMP_NUM_THREADS
        assert torch.get_num_threads() == 1
        cli_main(config, run=False)  # then OMP_NUM_THREADS
        assert torch.get_num_threads() == 2
        with pytest.raises(SystemExit) as ended:
            cli_main([*config, "--threads", "0"], run=False)
        assert ended.value.code == 2 and "--threads must be a positive integer" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_train_py_keeps_a_core_for_workers_that_simulate_but_not_for_workers_of_a_cached_data_module(machine):
    """A cached data module's workers simulate the first epoch, then sleep (``make demo``'s case)."""
    from lightning_recon.cli import cli_main

    config = ["--config", str(Path(__file__).resolve().parents[1] / "configs/experiment/demo_cpu.yaml"),
              "--data.init_args.num_workers=1"]
    machine["load"] = 5.0  # 3 cores free
    cli_main([*config, "--data.init_args.cache_samples=true"], run=False)
    assert torch.get_num_threads() == 3
    cli_main([*config, "--data.init_args.cache_samples=false"], run=False)
    assert torch.get_num_threads() == 2
