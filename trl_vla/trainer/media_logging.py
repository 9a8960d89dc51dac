"""Evaluation videos and the learning-curve image, sent to the `report_to` back-ends that take media.

transformers' integration callbacks log scalars only. The rollout trainers also write mp4 videos of evaluation
episodes and a learning-curve PNG, and this module hands them to the back-ends the run reports to:

* `wandb`: `wandb.Video` / `wandb.Image` in the run the `WandbCallback` started;
* `trackio`: `trackio.Video` / `trackio.Image` in the run the `TrackioCallback` started (stored locally, offline);
* `tensorboard`: images on the `TensorBoardCallback`'s writer. A video becomes a strip of up to `STRIP_FRAMES`
  frames evenly spaced through the episode (tensorboard's own video summary needs `moviepy`).

The trainer logs its scalars first, which (re)opens each back-end's run (transformers' callbacks start one on their
first log); a back-end without an open run is skipped. The files stay in `output_dir` either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np


__all__ = ["STRIP_FRAMES", "log_media"]

STRIP_FRAMES = 8


def log_media(
    trainer: Any, videos: dict[str, str] | None = None, images: dict[str, str] | None = None, frames: Any = None
) -> list[str]:
    """Log `videos` (`{tag: mp4 path}`) and `images` (`{tag: png path}`) at the trainer's global step.

    Args:
        trainer: A `transformers.Trainer` (its `args.report_to`, `state.global_step` and callbacks are read).
        videos: Videos to log.
        images: Images to log.
        frames: `{tag: [N, H, W, 3] uint8}`, the frames of each video (for tensorboard's strip; read from the file
            when missing).

    Returns:
        The back-ends that received something.
    """
    videos, images, frames = dict(videos or {}), dict(images or {}), dict(frames or {})
    report_to = trainer.args.report_to or []
    step = trainer.state.global_step
    reached = []
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log(
                {
                    **{t: wandb.Video(p, format="mp4") for t, p in videos.items()},
                    **{t: wandb.Image(p) for t, p in images.items()},
                }
            )
            reached.append("wandb")
    if "trackio" in report_to:
        import trackio

        if trackio.context_vars.current_run.get() is not None:
            trackio.log(
                {
                    **{t: trackio.Video(p, format="mp4") for t, p in videos.items()},
                    **{t: trackio.Image(p) for t, p in images.items()},
                },
                step=step,
            )
            reached.append("trackio")
    writer = _tensorboard_writer(trainer)
    if writer is not None:
        for tag, path in videos.items():
            writer.add_image(tag, _strip(frames.get(tag), path), step, dataformats="HWC")
        for tag, path in images.items():
            writer.add_image(tag, _read_image(path), step, dataformats="HWC")
        writer.flush()
        reached.append("tensorboard")
    return reached


def _tensorboard_writer(trainer: Any) -> Any:
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and getattr(callback, "tb_writer", None) is not None:
            return callback.tb_writer
    return None


def _strip(frames: Any, path: str) -> np.ndarray:
    if frames is None:
        import imageio.v2 as imageio

        frames = imageio.mimread(path)
    frames = np.asarray(frames)
    picks = np.linspace(0, len(frames) - 1, min(STRIP_FRAMES, len(frames))).round().astype(int)
    return np.concatenate(list(frames[picks]), axis=1)


def _read_image(path: str) -> np.ndarray:
    import imageio.v2 as imageio

    return np.asarray(imageio.imread(path))[..., :3]
