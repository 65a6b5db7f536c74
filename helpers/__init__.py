"""Helpers for measuring and exploiting the linearity of RLVR training, in three layers (each imports only the ones
below it):

- `helpers.lib`         — the library: checkpoints, trajectories, linearity, extrapolation, RELEX, the RL-Extra
                          callback, sampling and scoring, tasks, training. No pandas / matplotlib / papermill.
- `helpers.experiments` — one module per notebook (its tables, figures and claims), plus the claims protocol.
- `helpers.pipeline`    — the notebook session, run directories, the batch runner, reports and the robustness grid.
"""

__version__ = "0.1.0"
