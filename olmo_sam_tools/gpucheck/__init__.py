"""The GPU check: one short run that answers every question this project has about GPUs.

``bash scripts/gpu-check.sh`` (on one NVIDIA H100/H200, offline, wheels from
``scripts/gpu-wheels.sh``) or ``bash scripts/gpu-check.sh --cpu-dry-run`` (anywhere; tiny sizes).
Sections, each under its own time budget inside a global deadline (:mod:`.runner`):

* ``environment`` -- versions, device, peak FLOP/s assumed for MFU,
* ``sam_cuda`` / ``fsdp_bf16`` (:mod:`.correctness`) -- the SAM/ASAM step on CUDA vs an
  independent CPU computation (:mod:`.reference`); a bf16 FSDP SAM run,
* ``bnb`` (:mod:`.quant`) -- bitsandbytes NF4/int8 on the GPU kernels, PT-loss degradation,
* ``cost`` (:mod:`.cost`) -- SAM/AdamW step time, tokens/s, MFU, peak memory, switch-run ratio
  for the 20M/60M/150M presets at sequence length 1024.

Results: ``gpu-check.json`` and ``gpu-check.md`` in the output folder (:mod:`.report`).
"""
