"""A config run by the experiments' functions: its mode, folder, budget fields, KD setting, the
student's trainer (top-down, MAX78000 top-down or bottom-up) and its frozen teacher."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from ...models.registry import MCU_BOTTOMUP, MCU_TOPDOWN, TEACHER, model_entry
from .parse import ai8x_variant, bottom_up_input, student_key
from .schema import AI8X_STUDENT, BOTTOM_UP_STUDENT, ConfigError, MCU_STUDENTS, RunConfig, TEACHER_MODEL


# --------------------------------------------------------------------------- onto experiments.py
def resolved_mode(cfg: RunConfig) -> str:
    from ...config import get_mode

    return get_mode(cfg.data.mode)


def run_dir(cfg: RunConfig) -> Path:
    """The run's folder, the one ``train_student`` trains in: ``<checkpoints>/<name>_<student>_s<seed>``;
    for the MAX78000 students the QAT folder, ``<checkpoints>/<name>_s<seed>_qat``; for the teacher
    ``<checkpoints>/<name>_hrnet_s<seed>``."""
    from ...config import run_paths

    root = run_paths(resolved_mode(cfg)).checkpoints
    if cfg.model.student in MCU_STUDENTS:
        return root / f"{cfg.name}_s{cfg.seed}_qat"
    if cfg.model.student == TEACHER_MODEL:
        return root / f"{cfg.name}_{TEACHER_MODEL}_s{cfg.seed}"
    return root / f"{cfg.name}_{student_key(cfg.model)}_s{cfg.seed}"


def ai8x_steps(cfg: RunConfig) -> tuple[int, int]:
    """(float steps, QAT steps) of a MAX78000 run: the config's, else ``experiments.AI8X_STEPS``."""
    from ...train.experiments import AI8X_STEPS

    float_steps, qat_steps = AI8X_STEPS[resolved_mode(cfg)]
    return (cfg.optim.steps or float_steps, cfg.qat.steps or qat_steps)


def budget_fields(cfg: RunConfig) -> dict:
    """The :class:`~posekd_lib.train.budgets.Budget` fields the config sets (its non-null ones).

    ``augmentation`` and ``optim.amp`` map onto ``Budget.aug`` / ``Budget.amp``; setting them on a
    budget without those fields is a :class:`ConfigError`."""
    from ...train.budgets import Budget

    have = {f.name for f in dataclasses.fields(Budget)}
    out = {}
    for key, name, value in (("optim.batch_size", "batch_size", cfg.optim.batch_size),
                             ("optim.lr", "lr", cfg.optim.lr), ("augmentation", "aug", cfg.augmentation),
                             ("optim.amp", "amp", cfg.optim.amp)):
        if value is None:
            continue
        if name not in have:
            raise ConfigError(f"{key}: {value!r} set, but this library's Budget has no {name!r} field")
        out[name] = value
    return out


def kd_setting(cfg: RunConfig) -> tuple[str, dict]:
    """``(recipe tag, kd_recipe overrides)`` equivalent to ``cfg.distill``.

    The tag is the recipe its terms make (``recipes.distill_wanted``); only settings that differ from
    that recipe's config (``recipes.recipe_settings``) are passed, and a keyword the recipe does not
    state only when it differs from the distiller's default, so a config that spells out a
    notebook's recipe yields exactly that recipe (and reuses its cached run)."""
    from ...train.recipes import distill_wanted, distiller_defaults, recipe_settings

    tag, method, wanted = distill_wanted(cfg.distill)
    entry, defaults = recipe_settings(tag), distiller_defaults(method)
    overrides = {k: v for k, v in wanted.items()
                 if (k in entry and entry[k] != v) or (k not in entry and defaults.get(k, inspect.Parameter.empty) != v)}
    return tag, overrides


def train_run(cfg: RunConfig, teacher=None, progress: bool = True):
    """Train (or load, or resume) the run ``cfg`` describes with ``experiments.train_student``.

    A ``distil`` stage builds the distiller with ``recipes.kd_recipe`` (:func:`kd_setting`);
    ``teacher`` is the frozen teacher (loaded from ``distill.teacher`` when None). Returns
    ``train_student``'s :class:`~posekd_lib.train.experiments.Run`: the model, metrics and results row;
    for the MAX78000 student ``experiments.train_ai8x``'s :class:`~posekd_lib.train.experiments.Ai8xRun`
    (float, QAT and integer-simulated metrics; its logits term must be a recipe as is).
    """
    import os

    from ...train.budgets import budget_fields as with_budget
    from ...train.experiments import train_student
    from ...train.recipes import kd_recipe

    mode = resolved_mode(cfg)
    if cfg.data.coco_root is not None:
        os.environ["COCO_ROOT"] = str(cfg.data.coco_root)
    trainer = {MCU_TOPDOWN: _train_ai8x, MCU_BOTTOMUP: _train_bottom_up,
               TEACHER: _train_teacher}.get(model_entry(cfg.model.student).family)
    if trainer is not None:
        return trainer(cfg, teacher, progress)
    student = student_key(cfg.model)
    with with_budget(**budget_fields(cfg)):
        kd = None
        if "distil" in cfg.stages:
            if teacher is None:
                teacher = load_frozen_teacher(cfg)
            tag, overrides = kd_setting(cfg)
            kd = kd_recipe(tag, teacher, student, mode, extra_unlabelled=cfg.data.extra_unlabelled, **overrides)
        return train_student(student, mode=mode, seed=cfg.seed, loss=cfg.optim.loss, kd=kd, tag=cfg.name,
                             progress=progress, steps=cfg.optim.steps, labelled=cfg.data.labelled,
                             unlabelled=cfg.data.unlabelled, curve_every=cfg.optim.eval_every,
                             extra_unlabelled=cfg.data.extra_unlabelled)


def check_mapping(cfg: RunConfig) -> None:
    """The checks that need the mapping onto experiments.py (budget fields, distiller options), so
    ``run`` can make them before it writes anything."""
    budget_fields(cfg)
    if "distil" in cfg.stages and cfg.model.student != BOTTOM_UP_STUDENT:
        from ...train.recipes import RECIPES

        tag, overrides = kd_setting(cfg)
        if cfg.model.student == AI8X_STUDENT and overrides:
            raise ConfigError(f"distill.terms: {overrides} differ from the {tag!r} recipe "
                              f"(configs/{RECIPES[tag]}.yaml), which train_ai8x distils with as is")


def _train_ai8x(cfg: RunConfig, teacher, progress: bool):
    from ...train.budgets import budget_fields as with_budget
    from ...train.experiments import train_ai8x

    check_mapping(cfg)
    kd = None
    if "distil" in cfg.stages:
        kd = kd_setting(cfg)[0]
        if teacher is None:
            teacher = load_frozen_teacher(cfg)
    with with_budget(**budget_fields(cfg)):
        return train_ai8x(ai8x_variant(cfg.model), mode=resolved_mode(cfg), seed=cfg.seed, kd=kd, teacher=teacher,
                          tag=f"{cfg.name}_s{cfg.seed}", steps=ai8x_steps(cfg), progress=progress,
                          curve_every=cfg.optim.eval_every)


def _train_bottom_up(cfg: RunConfig, teacher, progress: bool):
    from ...train.bottom_up import teacher_keypoints, train_bottom_up
    from ...train.budgets import budget_fields as with_budget

    teacher_kp, teacher_maps, alpha = None, None, 0.5
    if "distil" in cfg.stages:
        if teacher is None:
            teacher = load_frozen_teacher(cfg)
        teacher_kp, alpha = teacher_keypoints(teacher, resolved_mode(cfg)), cfg.distill.terms[0].weight
    with with_budget(**budget_fields(cfg)):
        if teacher_kp is not None and cfg.distill.terms[0].options.get("targets") == "heatmaps":
            from ...train.recipes import teacher_cache_for

            teacher_maps = teacher_cache_for(teacher, resolved_mode(cfg))
        return train_bottom_up(ai8x_variant(cfg.model), resolved_mode(cfg), seed=cfg.seed, teacher_kp=teacher_kp,
                               alpha=alpha, steps=ai8x_steps(cfg), tag=f"{cfg.name}_s{cfg.seed}", progress=progress,
                               curve_every=cfg.optim.eval_every, loss=cfg.optim.loss, sigma=cfg.data.sigma,
                               input_size=bottom_up_input(cfg.model), teacher_maps=teacher_maps)


def _train_teacher(cfg: RunConfig, teacher, progress: bool):
    from ...train.budgets import budget_fields as with_budget
    from ...train.teacher_training import train_teacher
    from .parse import teacher_options, to_dict

    with with_budget(**budget_fields(cfg)):
        return train_teacher(cfg.name, run_dir(cfg), resolved_mode(cfg), seed=cfg.seed, **teacher_options(cfg.model),
                             steps=cfg.optim.steps, eval_every=cfg.optim.eval_every, progress=progress,
                             record=to_dict(cfg))


def load_frozen_teacher(cfg: RunConfig):
    """The frozen teacher a ``distil`` stage of ``cfg`` distils from (as notebooks 03-04 load it)."""
    from ...distill import freeze
    from ...models.teachers import load_teacher

    return freeze(load_teacher(cfg.distill.teacher, mode=resolved_mode(cfg))[0])
