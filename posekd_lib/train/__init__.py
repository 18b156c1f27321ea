"""The training loop: one readable ``fit`` with logging, checkpoints, exact resume, AMP and DDP.

Loss contract (the distillation hook):

* ``loss_fn(outputs, batch) -> Tensor | dict``: the task loss. A dict must hold the total under
  ``"loss"``; its other entries are only logged (e.g. unweighted parts). It defaults to the
  model's own ``loss`` method when it has one: a :class:`~posekd_lib.distill.Distiller` is trained
  as ``fit(distiller, loader)``, its adapters checkpointed, clipped and averaged under DDP like any
  weight, its frozen teacher kept out of the state dict and the optimizer.

``batch`` is the collated dict from the dataset (``image``, ``target``, ``target_weight``, ...) on
the training device; ``model`` is the bare module (never the DDP wrapper).

Run folder ``out_dir/run_name/``: ``latest.pt`` (everything needed to continue: model, optimizer,
scheduler, AMP scaler, step, epoch, position in the epoch, history, RNG states), ``best.pt``
(model + metrics of the best evaluation) and ``history.json``. Files are written to a temporary
name and renamed, so a kill never leaves a half-written checkpoint. To make the data position
resumable, ``fit`` draws each epoch's batch order from ``(seed, epoch)`` and rebuilds a DataLoader
per epoch with ``train_loader``'s settings, skipping the batches already done. A resumed run
equals an uninterrupted one exactly when random augmentations are drawn in the main process
(``num_workers=0``); with workers the order is exact but worker-side augmentations are re-drawn.

The package, one job a module: `loop` (``fit``), `guard` (the divergence guard), `checkpoints`,
`history`, `order` (the data order) and `rng` (seeds and RNG state). Import from here.
"""
from .loop import (
    cosine_schedule, fit,
)
from .guard import (
    TrainingDivergedError, NonFiniteLossError, WEIGHT_GROWTH_LIMIT, LOSS_GROWTH_LIMIT,
    LOSS_REFERENCE_STEPS,
)
from .checkpoints import (
    atomic_save, load_checkpoint,
)
from .history import (
    History,
)
from .order import (
    epoch_batches,
)
from .rng import (
    seed_everything, seed_worker, rng_state, set_rng_state,
)

__all__ = [
    'cosine_schedule', 'fit', 'TrainingDivergedError', 'NonFiniteLossError',
    'WEIGHT_GROWTH_LIMIT', 'LOSS_GROWTH_LIMIT', 'LOSS_REFERENCE_STEPS', 'atomic_save',
    'load_checkpoint', 'History', 'epoch_batches', 'seed_everything', 'seed_worker',
    'rng_state', 'set_rng_state',
]
