"""Train ETC, the spatial-only text-to-video diffusion model, and write sample videos.

With no arguments: the ``tiny`` preset on built-in moving shapes with triple-data batches
(caption-videos at 1-60 FPS, label-image groups at FPS 0, caption-images at FPS 120), on the CPU
in a few minutes; it prints where the checkpoint and the sample videos are. ``--help`` lists the
flags (your own videos and images, presets, steps, resume ...). Runs under ``torchrun`` unchanged::

    python examples/train_etc.py
    torchrun --nproc_per_node=2 examples/train_etc.py --device cuda --preset small
"""

from reference_models.etc.train import main

if __name__ == "__main__":
    main()
