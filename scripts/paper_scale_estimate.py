"""Paper-scale training cost without a GPU: FLOPs counted, memory measured on CPU, time estimated.

The paper's Pascal Context config (``experiments/vitup.yaml``: ViT-L/16 480x480, 59 classes,
paper-width decoder, VCR-2, HiCLR-3, mask loss) at 2 images per GPU (16 over 8 GPUs). Three parts,
each labelled in the output by how it was obtained:

- **counted**: MACs of one training forward (``VPNeXt.forward_train``, VCR branches included) by
  ``count_macs``; a step is taken as 3x the forward (backward = 2x forward, the usual rule; the
  deformable conv's backward recomputes its samples, a few % more) at 2 FLOPs per MAC;
- **measured**: the peak tensor memory of one forward + loss + backward on CPU, fp32 and bf16
  autocast (``peak_memory_mb``: the profiler's allocation events), plus the AdamW state that exists
  before any later step (2 fp32 tensors per parameter, exact);
- **estimated**: seconds per step on a GPU = step FLOPs / (dense bf16 peak x an assumed model FLOP
  utilisation). The utilisation is an assumption, not a measurement: ``scripts/device/paper_scale.sh``
  measures the real figure on a GPU.

    python scripts/paper_scale_estimate.py [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

from vpnext.models.macs import count_macs
from vpnext.tools.benchmark import training_loss
from vpnext.tools.model_config import load_model_config
from vpnext.tools.timing import peak_memory_mb

#: Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' datasheets.
GPU_PEAK_TFLOPS = {"A100 (SXM/PCIe)": 312.0, "H100 SXM": 989.0}
MFU = (0.25, 0.45)  # assumed range of model FLOP utilisation
ITERATIONS = 20_000  # the paper's Pascal Context schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="images per GPU")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    config = load_model_config(
        ["experiments/vitup.yaml"], ["--model.pretrained=false", "--model.img_size=480"]
    )
    torch.manual_seed(0)
    model = config.build().train()
    params = sum(p.numel() for p in model.parameters())
    images = torch.randn(args.batch, 3, 480, 480)
    labels = torch.randint(0, config.model_args["num_classes"], (args.batch, 480, 480))
    fwd_macs = count_macs(model, images[:1], call=model.forward_train).macs
    criterion = training_loss(config)
    out = {
        "config": "experiments/vitup.yaml (ViT-L/16 480x480, paper width, VCR-2, HiCLR-3)",
        "batch_per_gpu": args.batch,
        "params_m": params / 1e6,
        "counted": {"forward_gmacs_per_image": fwd_macs / 1e9},
    }
    step_tflop = 3 * 2 * fwd_macs * args.batch / 1e12
    out["counted"]["step_tflop"] = step_tflop
    out["measured_cpu_mib"] = {}
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

        def step(autocast: contextlib.AbstractContextManager = autocast) -> None:
            with autocast:
                loss = criterion(model.forward_train(images), labels)["loss"]
            loss.backward()

        model.zero_grad(set_to_none=True)  # gradients are allocated inside the measured call
        activations_and_grads = peak_memory_mb(step, torch.device("cpu"))
        weights_and_adam = 3 * 4 * params / 2**20  # fp32 weights + AdamW exp_avg, exp_avg_sq
        out["measured_cpu_mib"][precision] = {
            "step_peak_over_weights": activations_and_grads,
            "weights_and_adamw_state": weights_and_adam,
            "total": activations_and_grads + weights_and_adam,
        }
        print(precision, json.dumps(out["measured_cpu_mib"][precision]), flush=True)
    out["estimated"] = {
        gpu: {
            f"mfu_{mfu:.2f}": {
                "s_per_step": step_tflop / (peak * mfu),
                "hours_for_20k": step_tflop / (peak * mfu) * ITERATIONS / 3600,
            }
            for mfu in MFU
        }
        for gpu, peak in GPU_PEAK_TFLOPS.items()
    }
    out["assumptions"] = {"gpu_peak_tflops_bf16_dense": GPU_PEAK_TFLOPS, "mfu": list(MFU)}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
