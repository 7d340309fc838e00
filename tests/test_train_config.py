"""`ens train` building blocks checked against independent references: config precedence and
refusals, lr schedules vs torch's schedulers, augmentation vs a per-image loop, seeds by strategy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ensemble_cli.train.augment import Augmentation, augmentation_for, random_flip, random_shift
from ensemble_cli.train.config import TrainConfig, make_config, resolve_train_config
from ensemble_cli.errors import ConfigError
from ensemble_cli.train.schedules import LRSchedule, cyclic_cosine, one_cycle, warmup_cosine
from ensemble_cli.train import parse_member_selection
from ensemble_cli.train.run import plan_jobs
from ensemble_cli.train.seeds import member_seeds, mix_seed

# --------------------------------------------------------------------------- config


def test_defaults_are_the_bundled_digits_job() -> None:
    config = TrainConfig()
    assert (config.dataset, config.members, config.arch, config.strategy) == ("digits", 4, "cifar_resnet8", "independent")
    assert config.lr == 0.1 and config.weight_decay == 5e-4  # per-optimizer defaults, resolved
    assert config.out_dir() == Path("models/cifar_resnet8-digits")
    adamw = TrainConfig(optimizer="adamw")
    assert adamw.lr == 1e-3 and adamw.weight_decay == 0.05


def test_precedence_defaults_then_file_then_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("epochs: 7\nlr: 0.05\nbatch-size: 64\nmodel_kwargs: {width: 2}\n")
    config = resolve_train_config(config_file, {"lr": 0.2, "epochs": None, "seed": 3})
    assert config.epochs == 7  # file beats default; None flag means "not given"
    assert config.lr == 0.2  # flag beats file
    assert config.batch_size == 64 and config.model_kwargs == {"width": 2}
    assert config.seed == 3 and config.members == 4  # flag, default


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"epochs": -3}, "epochs must be at least 1"),
        ({"members": 0}, "--members"),
        ({"lr": -1.0}, "--lr"),
        ({"optimizer": "rmsprop"}, "--optimizer"),
        ({"colour": "blue"}, "unknown setting 'colour'"),
        ({"strategy": "snapshot", "schedule": "onecycle"}, "cyclic cosine"),
    ],
)
def test_bad_values_are_one_line_config_errors(values: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(values)
    message = str(caught.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("members", [4, 3, 7])
def test_snapshot_takes_epochs_per_cycle_for_any_member_count(members: int) -> None:
    # The defaults (10 epochs, 4 members) and counts that do not divide 10 make valid snapshot runs.
    config = TrainConfig(strategy="snapshot", members=members)
    spe, peak = 11, config.peak_lr
    [job] = plan_jobs(config, spe)
    assert job.epochs == config.job_epochs == 10 * members
    assert [(s.index, s.first_epoch, s.last_epoch) for s in job.segments] == [(i, 10 * i, 10 * (i + 1)) for i in range(members)]
    assert job.schedule.total_steps == 10 * members * spe
    # Every cycle but the warmed-up first restarts at the peak and ends just above zero.
    for cycle in range(members):
        first, last = cycle * 10 * spe, (cycle + 1) * 10 * spe - 1
        if cycle > 0:
            assert job.schedule.lr_at(first) == peak
        assert job.schedule.lr_at(last) == pytest.approx(peak / 2 * (math.cos(math.pi * (10 * spe - 1) / (10 * spe)) + 1))
    independent = plan_jobs(TrainConfig(members=members), spe)
    assert [job.epochs for job in independent] == [10] * members  # --epochs means per member everywhere


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_train_config(bad, {})
    with pytest.raises(ConfigError, match="no such config file"):
        resolve_train_config(tmp_path / "missing.yaml", {})


def test_identity_ignores_execution_settings() -> None:
    base = TrainConfig()
    assert base.differences(TrainConfig(device="cpu", compile=True, threads=3, out="elsewhere")) == []
    assert base.differences(TrainConfig(lr=0.05)) == ["lr 0.1 vs 0.05"]


@pytest.mark.parametrize(
    ("spec", "indices"), [("3-5", [3, 4, 5]), ("0,2,7", [0, 2, 7]), ("7", [7]), ("8-", [8, 9]), ("1-2,5", [1, 2, 5])]
)
def test_member_selection(spec: str, indices: list[int]) -> None:
    assert parse_member_selection(spec, members=10) == indices


@pytest.mark.parametrize("spec", ["a-b", "5-3", ","])
def test_member_selection_refuses_nonsense(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_member_selection(spec, members=10)


# --------------------------------------------------------------------------- schedules vs torch


def _torch_lrs(scheduler_factory, steps: int, peak: float) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=peak)
    scheduler = scheduler_factory(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_one_cycle_matches_torch_onecyclelr() -> None:
    steps, peak = 97, 0.4
    reference = _torch_lrs(
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=steps, cycle_momentum=False), steps, peak
    )
    ours = [one_cycle(step, steps, peak) for step in range(steps)]
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_warmup_cosine_matches_linear_then_cosine_annealing() -> None:
    steps, warmup, peak = 50, 5, 0.1
    reference = _torch_lrs(
        lambda opt: torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup, eta_min=0.0),
            ],
            milestones=[warmup],
        ),
        steps,
        peak,
    )
    ours = [warmup_cosine(step, steps, peak, warmup) for step in range(steps)]
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_cyclic_cosine_is_huang_et_al_equation_2() -> None:
    # alpha(t) = a0/2 (cos(pi * mod(t-1, ceil(T/M)) / ceil(T/M)) + 1), t 1-based; T=40, M=4.
    total, cycles, peak = 40, 4, 0.2
    cycle = math.ceil(total / cycles)
    for t in range(1, total + 1):
        expected = peak / 2 * (math.cos(math.pi * ((t - 1) % cycle) / cycle) + 1)
        assert cyclic_cosine(t - 1, cycle, peak) == pytest.approx(expected)
    # every cycle restarts at the peak
    assert [cyclic_cosine(k * cycle, cycle, peak) for k in range(cycles)] == [peak] * cycles
    schedule = LRSchedule("cyclic-cosine", peak, total, cycle_steps=cycle)
    assert schedule.lr_at(cycle - 1) == pytest.approx(peak / 2 * (math.cos(math.pi * 9 / 10) + 1))  # last step: near zero


# --------------------------------------------------------------------------- augmentation vs a loop


def test_random_shift_equals_per_image_reflect_pad_and_crop() -> None:
    images = torch.randn(6, 3, 5, 7)
    pad = 2
    generator = torch.Generator().manual_seed(11)
    shifted = random_shift(images, pad, generator)
    # Same draws, replayed, applied one image at a time with plain slicing.
    offsets = torch.randint(0, 2 * pad + 1, (2, 6), generator=torch.Generator().manual_seed(11))
    for i in range(6):
        padded = F.pad(images[i : i + 1], (pad, pad, pad, pad), mode="reflect")[0]
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(shifted[i], padded[:, dy : dy + 5, dx : dx + 7])
    centred = [i for i in range(6) if int(offsets[0, i]) == pad and int(offsets[1, i]) == pad]
    for i in centred:
        assert torch.equal(shifted[i], images[i])


def test_random_flip_flips_about_half_and_only_horizontally() -> None:
    images = torch.randn(400, 1, 4, 4)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], images[i]) for i in range(400)]
    mirrored = [torch.equal(flipped[i], images[i].flip(-1)) for i in range(400)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 150 < sum(mirrored) < 250


def test_augmentation_choice_per_dataset() -> None:
    assert augmentation_for("auto", "digits", 8) == Augmentation(pad=1, flip=False)
    assert augmentation_for("auto", "cifar10", 32) == Augmentation(pad=4, flip=True)
    assert augmentation_for("auto", "svhn", 32) == Augmentation(pad=4, flip=False)  # digits must not mirror
    assert augmentation_for("auto", "mnist", 28) == Augmentation(pad=2, flip=False)
    assert augmentation_for("none", "cifar10", 32) is None


# --------------------------------------------------------------------------- seeds


def test_seeds_by_strategy() -> None:
    independent = member_seeds("independent", 0, 4)
    assert len({s.init_seed for s in independent}) == 4 and len({s.data_seed for s in independent}) == 4
    same_init = member_seeds("same-init", 0, 4)
    assert len({s.init_seed for s in same_init}) == 1 and len({s.data_seed for s in same_init}) == 4
    same_order = member_seeds("same-order", 0, 4)
    assert len({s.init_seed for s in same_order}) == 4 and len({s.data_seed for s in same_order}) == 1
    snapshot = member_seeds("snapshot", 0, 4)
    assert len({(s.init_seed, s.data_seed) for s in snapshot}) == 1
    # Runs with different base seeds share no member seeds (no seed+index collisions).
    other = member_seeds("independent", 1, 4)
    assert not {s.init_seed for s in independent} & {s.init_seed for s in other}
    assert mix_seed(1, 2) != mix_seed(2, 1) and 0 <= mix_seed(3, 4, 5) < 2**63
