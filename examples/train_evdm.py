"""Train EVDM, the efficiency-optimized video diffusion model, and write sample videos.

With no arguments: the ``tiny_evdm`` preset (bottleneck residual pathways with temporal
enhancement and mixed self-attention, at CPU size) on built-in grayscale moving shapes, trained
with eq. 7's unified masks so that one model predicts, interpolates and generates; on the CPU in a
few minutes. It prints where the checkpoint and the predicted, interpolated and generated sample
videos are. ``--help`` lists the flags (your own videos, presets such as ``kth_evdm`` or the
``kth_mcvd`` baseline, steps, resume ...). Runs under ``torchrun`` unchanged::

    python examples/train_evdm.py
    python examples/train_evdm.py --data path/to/videos --preset kth_evdm --device cuda --batch-size 64
    torchrun --nproc_per_node=2 examples/train_evdm.py --device cuda --preset bair_evdm_l --data bair/
"""

from reference_models.evdm.train import main

if __name__ == "__main__":
    main()
