"""The distillation recipes of notebooks 03-05 and ``benchmarks/``, by run tag, and the teacher cache.

A recipe is a committed run config: :data:`RECIPES` names, for each tag, the config whose
``distill`` section holds its terms and weights (``configs/fpd_squeezenet.yaml`` for ``fpd``, ...),
and :func:`recipe_settings` reads it as the distiller's keywords. The feature setting's layer pairs
are the student's (``registry.ModelEntry.hint_pairs``). :func:`kd_recipe` turns a tag into the ``kd``
factory that :func:`~posekd_lib.train.experiments.train_student` trains with, and records the recipe (the
teacher's :func:`weights_fingerprint` included) with the run. How β and the pairs were chosen:
``docs/experiments.md`` ("How the feature recipe was chosen"); why α = 0.5: notebook 03.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from typing import Callable

import torch
from torch import nn

from .budgets import budget, training_set
from ..config import REPO_ROOT, run_paths

#: The distillation settings of notebooks 03-04 and ``benchmarks/bench_kd.py``, by run tag: the
#: config file (``configs/<name>.yaml``) whose ``distill`` section is the recipe. ``fpd``: FPD's
#: heatmap MSE to the teacher; ``kl``: spatial-softmax KL at a temperature; ``feature``: FitNets
#: hints on the last stride-4 features on top of the FPD term.
RECIPES: dict[str, str] = {"fpd": "fpd_squeezenet", "kl": "kl_squeezenet", "feature": "feature_squeezenet"}
#: The keys a recipe always states, by distiller method; its other keywords only when they differ
#: from the distiller's defaults (so a recipe and a config that spells it out are one run).
_CORE_KEYS = {"logits": ("kind", "alpha"), "feature": ("beta", "alpha_logits", "kind")}


def distill_wanted(distill) -> tuple[str, str, dict]:
    """``(tag, method, keywords)`` that a config's ``distill`` section (a
    :class:`~posekd_lib.runs.runconfig.DistillConfig`) asks of the distiller: ``fpd``/``kl`` alone are the
    logits recipes (``LogitsKD``), a ``hint`` term (with at most one logits term) the feature recipe
    (``FeatureKD``). Every keyword the section names is in ``keywords``, defaults included; an option
    no distiller takes is a :class:`~posekd_lib.runs.runconfig.ConfigError` naming its key."""
    from ..distill import FeatureKD, LogitsKD
    from ..runs.runconfig.parse import _suggest
    from ..runs.runconfig.schema import HINT_OPTIONS, LOGIT_OPTIONS, LOGIT_TERMS, ConfigError

    terms = distill.terms
    i_hint = next((i for i, t in enumerate(terms) if t.kind == "hint"), None)
    i_logit = next((i for i, t in enumerate(terms) if t.kind in LOGIT_TERMS), None)
    hint = terms[i_hint] if i_hint is not None else None
    logit = terms[i_logit] if i_logit is not None else None
    wanted: dict = {}
    if hint is None:
        tag, method, cls = ("fpd" if logit.kind == "fpd" else "kl"), "logits", LogitsKD
        wanted.update(kind=LOGIT_TERMS[logit.kind], alpha=logit.weight)
    else:
        tag, method, cls = "feature", "feature", FeatureKD
        wanted.update(beta=hint.weight, alpha_logits=logit.weight if logit else 0.0,
                      kind=LOGIT_TERMS[logit.kind] if logit else "mse")
        if hint.pairs:
            wanted["pairs"] = {str(k): str(v) for k, v in hint.pairs.items()}
    params = set(inspect.signature(cls).parameters)
    shared = params - {"teacher", "student", "total_steps", "pairs", "alpha", "beta", "alpha_logits", "kind",
                       "input_size", "schedule", *LOGIT_OPTIONS, *HINT_OPTIONS}
    shared |= {"teacher_cache"}   # kd_recipe's: the teacher's heatmaps (and hinted features) computed once
    for where, term, allowed in ((f"distill.terms[{i_logit}]", logit, set(LOGIT_OPTIONS) & params),
                                 (f"distill.terms[{i_hint}]", hint, set(HINT_OPTIONS) & params),
                                 ("distill", distill, shared)):
        for k, v in (term.options if term is not None else {}).items():
            if k not in allowed:
                label = f"a {term.kind} term" if where != "distill" else f"the {cls.__name__} distiller"
                raise ConfigError(f"{where}.options.{k}: unknown option{_suggest(k, allowed)}; "
                                  f"{label} takes {sorted(allowed)}")
            wanted[k] = v
    wanted["schedule"] = distill.schedule
    return tag, method, wanted


def distiller_defaults(method: str) -> dict:
    """The keyword defaults of the distiller a recipe ``method`` builds (``teacher_cache``: the logits
    recipes read the teacher's heatmaps from the cache unless told not to; the feature one runs live)."""
    from ..distill import FeatureKD, LogitsKD

    cls = LogitsKD if method == "logits" else FeatureKD
    return {**{k: p.default for k, p in inspect.signature(cls).parameters.items()},
            "teacher_cache": method == "logits"}


@functools.lru_cache(maxsize=None)
def _recipe_settings(tag: str) -> str:
    from ..runs.runconfig.parse import from_yaml

    if tag not in RECIPES:
        raise KeyError(f"unknown distillation setting {tag!r}; choose one of {sorted(RECIPES)}")
    path = REPO_ROOT / "configs" / f"{RECIPES[tag]}.yaml"
    found, method, wanted = distill_wanted(from_yaml(path).distill)
    if found != tag:
        raise ValueError(f"{path}: its distill terms make the {found!r} recipe, not {tag!r} (recipes.RECIPES)")
    wanted.pop("pairs", None)     # the student's, from the registry
    defaults = distiller_defaults(method)
    teacher_cache = wanted.pop("teacher_cache", defaults["teacher_cache"])
    settings = {"method": method, **{k: v for k, v in wanted.items()
                                     if k in _CORE_KEYS[method] or v != defaults.get(k, inspect.Parameter.empty)}}
    return json.dumps({**settings, "teacher_cache": True} if teacher_cache else settings)


def recipe_settings(tag: str) -> dict:
    """The distiller keywords of the recipe ``tag`` (a fresh dict), read from its config
    (:data:`RECIPES`): ``method`` (``logits`` or ``feature``), the keys every recipe states (the logits
    ``kind`` and ``alpha``; the feature recipe's ``beta``, ``alpha_logits`` and ``kind``), the other
    keywords where they differ from the distiller's defaults, and ``teacher_cache`` where the teacher's
    outputs come from the cache (the logits recipes' default)."""
    return json.loads(_recipe_settings(tag))


def kd_recipe(tag: str, teacher: nn.Module, student_name: str, mode=None, extra_unlabelled: int = 0,
              **overrides) -> Callable:
    """The ``kd`` factory of :func:`train_student` for a :data:`RECIPES` tag (``overrides`` win).

    ``train_student(name, kd=kd_recipe("fpd", teacher, name), tag="fpd")`` trains with FPD's loss;
    ``kd_recipe(...)(student, total_steps)`` is the :class:`~posekd_lib.distill.Distiller` itself.
    The teacher sees the student's crops resized to its own input size (an HRNet's ``image_size``,
    from its config; for another module the mode's teacher config's) when it differs from the
    budget's (``full``: the W48's 288x384 for 192x256 students; the demo teacher shares the crop, a
    demo-line teacher at 160x128 does not); ``teacher_input_size=(w, h)`` in ``overrides`` wins.

    ``teacher_cache`` (the logits settings' default, ``teacher_cache=False`` to run the teacher
    live): the teacher's heatmaps of every training person's plain crop are computed once
    (:func:`teacher_cache_for`) and warped to each augmented crop, so a distilled step costs no
    teacher forward; the recipe records it (a run with and one without are different runs). Batches
    the cache does not cover (a labelled subset, unlabelled persons) get the live teacher. The
    feature setting takes ``teacher_cache=True`` too: its hinted layers' features are cached the
    same way (:func:`feature_cache_for`), so a hinted step runs no teacher forward either.
    ``extra_unlabelled``: the run's :func:`train_student` count of extra unlabelled images, so that
    the caches cover their persons too.
    """
    from hrnet_pose.configs import load_configs

    from ..distill import FeatureKD, LogitsKD
    from ..models.registry import MODELS
    from ..models.teachers import DEMO_CONFIG, FULL_CONFIG

    base = recipe_settings(tag)
    b = budget(mode)
    teacher_size = getattr(teacher, "image_size", None) or \
        tuple(int(v) for v in load_configs(FULL_CONFIG if b.mode == "full" else DEMO_CONFIG).MODEL.IMAGE_SIZE)
    default_size = None if teacher_size == tuple(b.input_size) else teacher_size
    settings = {**base, "teacher_input_size": default_size, **overrides}
    method = settings.pop("method")
    teacher_cache = bool(settings.pop("teacher_cache", False))
    if method == "logits":
        build = lambda student, total: LogitsKD(teacher, student, total_steps=total, **settings)  # noqa: E731
    else:
        entry = MODELS.get(student_name)
        pairs = settings.pop("pairs", None) or (entry.hint_pairs if entry is not None else None)
        if not pairs:
            known = sorted(n for n, e in MODELS.items() if e.hint_pairs)
            raise KeyError(f"no feature-KD layer pairs for student {student_name!r}; pass pairs={{student_layer: "
                           f"teacher_layer}} (registry.MODELS has them for {known})")
        settings["pairs"] = dict(pairs)
        build = lambda student, total: FeatureKD(teacher, student, total_steps=total,  # noqa: E731
                                                 input_size=b.input_size, **settings)
    recipe = json.loads(json.dumps({"setting": tag, "method": method, **settings},
                                   default=lambda o: getattr(o, "__qualname__", type(o).__name__)))
    recipe["teacher"] = weights_fingerprint(teacher) if teacher is not None else None  # new teacher: new run
    if teacher_cache:
        recipe["teacher_cache"] = True
        if teacher is not None:      # (None: only the recipe is wanted)
            size = settings["teacher_input_size"] or b.input_size
            settings["cache"] = _LazyCache(lambda: teacher_cache_for(teacher, b, size, extra_unlabelled))
            if method == "feature":  # each hinted teacher layer's features, cached the same way
                branches = settings.get("branches", "first")
                settings["feature_cache"] = [
                    _LazyCache(lambda layer=layer: feature_cache_for(teacher, layer, branches, b, size,
                                                                     extra_unlabelled=extra_unlabelled))
                    for layer in settings["pairs"].values()]
    return _KDFactory(build, recipe)


class _LazyCache:
    """A teacher cache built (or loaded) at the first batch that needs it, so that loading a
    finished distilled run never builds one."""

    def __init__(self, make: Callable):
        self._make, self._cache = make, None

    def for_batch(self, batch: dict, *args, **kwargs) -> torch.Tensor:
        if self._cache is None:
            self._cache = self._make()
        return self._cache.for_batch(batch, *args, **kwargs)


def teacher_cache_for(teacher: nn.Module, mode=None, input_size=None, extra_unlabelled: int = 0):
    """The :class:`~posekd_lib.distill.teacher_cache.TeacherCache` of ``teacher`` on the mode's training
    persons at ``input_size`` (default the budget's): built once (one teacher forward per person)
    and stored under ``run_paths(mode).root / "teacher_cache"``, named by the teacher's
    :func:`weights_fingerprint`, so another teacher never reads it. ``extra_unlabelled``: over the
    training set with that many extra unlabelled images (:func:`training_set`)."""
    from ..distill.teacher_cache import TeacherCache

    device = next(teacher.parameters()).device
    return _stored_cache(teacher, mode, input_size, "", lambda ds, size, source, partial: TeacherCache.build(
        lambda x: teacher(x.to(device)), ds, input_size=size, source=source, partial=partial), extra_unlabelled)


def feature_cache_for(teacher: nn.Module, layer: str, branches: str = "first", mode=None, input_size=None,
                      mirrored: bool = True, extra_unlabelled: int = 0):
    """Like :func:`teacher_cache_for`, for the features of the teacher layer ``layer`` (its
    ``branches`` as the hint reads them, :func:`build_feature_cache`; with ``mirrored`` also of every
    crop mirrored), stored next to the heatmap cache under a name that adds the layer and branches."""
    return _stored_cache(teacher, mode, input_size, f"_{layer}-{branches}{'-mirrored' if mirrored else ''}",
                         lambda ds, size, source, partial: build_feature_cache(teacher, ds, layer, branches, size,
                                                                               source, mirrored, partial),
                         extra_unlabelled)


def build_feature_cache(teacher: nn.Module, dataset, layer: str, branches: str = "first", input_size=None,
                        source: str = "", mirrored: bool = True, partial=None):
    """A :class:`~posekd_lib.distill.teacher_cache.TeacherCache` of the features of ``teacher``'s layer
    ``layer`` (``branches`` as the hint reads them) for every person of ``dataset``'s plain crops,
    float16. With ``mirrored`` (twice the time and memory) the features of each crop mirrored are
    stored too and a mirrored training crop reads them; without, it reads the plain crop's features
    mirrored (no channel is swapped: features have no left and right joints), an approximation that
    cost AP (``docs/experiments.md``, E13). ``partial``: as ``TeacherCache.build``'s (resumable)."""
    from ..distill import FeatureHooks, _feature_tensor
    from ..distill.teacher_cache import TeacherCache

    device = next(teacher.parameters()).device
    with FeatureHooks(teacher, [layer]) as hooks:
        def features(x):
            teacher(x.to(device))
            return _feature_tensor(hooks[layer], layer, branches)

        return TeacherCache.build(features, dataset, input_size=input_size, flip_pairs=(), source=source,
                                  mirrored=mirrored, partial=partial)


def _stored_cache(teacher: nn.Module, mode, input_size, kind: str, build, extra_unlabelled: int = 0):
    """The cache ``build(dataset, size, source, partial)`` makes over the mode's training persons, loaded
    from (or saved to) ``teacher_cache/<fingerprint><kind>_<w>x<h>_<persons>.pt`` under the mode's runs
    (``partial``: the folder where an interrupted build keeps its rows, ``<...>.partial/``)."""
    from ..distill.teacher_cache import cached_teacher, partial_path

    b = budget(mode)
    size = tuple(int(v) for v in (input_size or b.input_size))
    ds = training_set(b, extra_unlabelled=extra_unlabelled)
    extra = f"_x{int(extra_unlabelled)}" if extra_unlabelled else ""
    path = (run_paths(b.mode).root / "teacher_cache" /
            f"{weights_fingerprint(teacher)}{kind}_{size[0]}x{size[1]}_{len(ds)}{extra}.pt")
    return cached_teacher(path, lambda: build(ds, size, str(path), partial_path(path)))


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state (names, shapes, dtypes and values of every tensor), so that a
    distilled run's recipe names the teacher it was distilled from."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


class _KDFactory:
    """``kd_recipe``'s return value: ``(student, total_steps) -> Distiller`` plus the ``recipe`` it builds,
    which :func:`train_student` stores with the run, so a cached run made with other KD settings
    under the same tag is reported instead of silently reused."""

    def __init__(self, build: Callable, recipe: dict):
        self.build, self.recipe = build, recipe

    def __call__(self, student, total_steps):
        return self.build(student, total_steps)
