"""LUMOS in the trainers and loggers people already use.

- :mod:`lumos.integrations.lightning`: :class:`~lumos.integrations.lightning.LumosCallback`,
  the penalty, progress, budget and compaction of a sparse model inside a Lightning
  ``Trainer`` (DDP through Lightning's strategy);
- :mod:`lumos.integrations.tensorboard`: :class:`~lumos.integrations.tensorboard.GateLogger`,
  gate trajectories, kept widths and features as TensorBoard scalars and histograms.

Each imports its package (``lightning``, ``tensorboard``) only when it is imported itself:
``import lumos`` loads neither. ``pip install "lumos-sciml[integrations]"`` installs both.
"""
