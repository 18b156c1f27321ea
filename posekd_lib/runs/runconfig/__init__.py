"""One run as one YAML file: :class:`RunConfig`, its checks, overrides, id and the recipe it maps to.

A run's settings used to live in five places (the mode's ``Budget``, a table of KD settings, keyword
overrides, ``--set`` flags and the run's name); a :class:`RunConfig` holds all of them as plain
dataclasses, read from and written to YAML (``configs/*.yaml``, and ``config.yaml`` in the run's
folder)::

    name: feature                 # the run's tag: folder <tag>_<student>_s<seed>, results setting
    seed: 0
    data: {mode: null, coco_root: null, labelled: 1.0, unlabelled: false, extra_unlabelled: 0, sigma: null}
    model: {student: squeezenet, options: {}}
    augmentation: null            # a Budget.aug preset name; null: the mode budget's
    optim: {steps: null, batch_size: null, lr: null, schedule: cosine, loss: mse, amp: null}
    distill:
      teacher: null               # teachers.load_teacher name; null: the mode's teacher
      schedule: constant
      terms:
        - {kind: hint, weight: 1.0, pairs: {neck.4: stage4}}
        - {kind: fpd, weight: 0.5}
    quantize: {calib_samples: 64, method: MinMax, per_channel: true}
    export: {opset: 17, dynamic_batch: true, dynamo: false}
    stages: [distil, evaluate]       # of STAGES; qat/prune sections are placeholders, not wired yet

``null`` means "the mode's :class:`~posekd_lib.train.budgets.Budget` value", so one file serves every
mode. :func:`from_dict` checks every key and value and raises a :class:`ConfigError` naming the
dotted key (``distill.terms[1].kind``); :func:`apply_overrides` applies ``--set a.b=c`` items
(values read as YAML); :func:`config_id` is a short hash of the canonical YAML.

:func:`train_run` makes the run with the existing functions of :mod:`posekd_lib.train.experiments`
(``train_student`` and ``kd_recipe``), so a config that says what a notebook does reuses the
notebook's cached run and gives the same metrics for the same seed: the distillation terms map
onto one recipe (``recipes.RECIPES``: the config that holds it) plus overrides (``fpd``/``kl`` alone: ``LogitsKD``; a ``hint`` term,
optionally with one logits term: ``FeatureKD``), and only settings that differ from the entry and
from the distiller's defaults are passed, so the stored recipe equals the notebook's.

The runs table (``<mode folder>/runs.csv``, one row per config id, every config field a column)
is :mod:`posekd_lib.runs.table`'s: the project's one results table.

The teacher is a config too (``model.student: hrnet``, ``configs/teacher_w16.yaml``), trained by
:mod:`posekd_lib.train.teacher_training` with the stages ``train``, ``evaluate`` and ``export``.

The package, one job a module: `schema` (the dataclasses, the choices, `ConfigError`), `parse`
(reading, checking, `--set` overrides, the config id) and `runner` (a config run by the
experiments' functions). Import from here.
"""
from .schema import (
    STAGES, WIRED_STAGES, AI8X_STUDENT, BOTTOM_UP_STUDENT, MCU_STUDENTS, TEACHER_MODEL, LOGIT_TERMS,
    LOGIT_OPTIONS, HINT_OPTIONS, TERM_KINDS, AMP_CHOICES, LR_SCHEDULES, ConfigError, DataConfig,
    ModelConfig, OptimConfig, DistillTerm, DistillConfig, QatConfig, PruneConfig,
    QuantizeConfig, ExportConfig, RunConfig,
)
from .parse import (
    from_dict, from_yaml, to_dict, to_yaml, config_id, validate, bottom_up_input, ai8x_variant,
    student_key, teacher_options, apply_overrides,
)
from .runner import (
    resolved_mode, run_dir, ai8x_steps, budget_fields, kd_setting, train_run, check_mapping,
    load_frozen_teacher,
)

__all__ = [
    'STAGES', 'WIRED_STAGES', 'AI8X_STUDENT', 'BOTTOM_UP_STUDENT', 'MCU_STUDENTS', 'TEACHER_MODEL',
    'LOGIT_TERMS', 'LOGIT_OPTIONS', 'HINT_OPTIONS', 'TERM_KINDS', 'AMP_CHOICES', 'LR_SCHEDULES',
    'ConfigError', 'DataConfig', 'ModelConfig', 'OptimConfig', 'DistillTerm', 'DistillConfig',
    'QatConfig', 'PruneConfig', 'QuantizeConfig', 'ExportConfig', 'RunConfig', 'from_dict',
    'from_yaml', 'to_dict', 'to_yaml', 'config_id', 'validate', 'bottom_up_input',
    'ai8x_variant', 'student_key', 'teacher_options', 'apply_overrides', 'resolved_mode', 'run_dir', 'ai8x_steps',
    'budget_fields', 'kd_setting', 'train_run', 'check_mapping', 'load_frozen_teacher',
]
