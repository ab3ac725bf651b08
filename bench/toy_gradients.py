"""Why the DDIM-inversion methods (ISM, CSM) are weak on the toy teacher: two measurements, no training.

1. Inversion amplification. The toy teacher is the exact posterior-mean denoiser of a finite bank of images, so at
   t ~ 0 it predicts ``eps = (x - a x0_nearest) / sqrt(1 - abar)``: a render's distance to its nearest bank image
   is multiplied by ~35. LucidDreamer's x_s (DDIM inversion starting at ~0) then carries noise far from unit
   scale. Measured: the rms of the noise x_s implies around the render, ``(x_s - a_s z) / s_s`` (1 for a proper
   noised point), per inversion start (``guidance.inversion_floor``).
2. Gradient quality. A render 2 px off a true red-cube view and 10% darker; per method, over 48 draws at three
   training steps: the cosine between the mean gradient and (render - truth), the mean per-draw cosine, and the
   signal-to-noise ratio |E g| / sqrt(E |g - E g|^2).
3. The inversion's premise. ISM's gradient is, up to CFG, ``x0(x_s) - x0(x_t)`` (the DDIM step from s to t makes
   ``sqrt(abar_t) (x0_s - x0_t) = sqrt(1 - abar_t) (eps_t - e_s)``): it moves the render from what the teacher
   reads at x_s towards what it reads at x_t. That is a step from the render towards the data only if x_s still
   holds the render, ``x0(x_s) ~ z``. Measured: ``|x0(x_s) - z|`` and ``|x0(x_s) - truth|`` in units of the
   render's error ``|z - truth|``, for the exact teacher (inversion from ~0 and from t = 100) and for the learned
   toy teacher (``builtin:toy-learned``, the same 32 px world, a smooth network), inversion from ~0 as the source.
4. Section 2's measurement through the learned teacher.

    python bench/toy_gradients.py        # writes bench/results/toy_gradients.md (a few minutes)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dreamengine.config.guidance import BSDConfig, CSMConfig, ISMConfig, SDSConfig
from dreamengine.core.conditioning import PromptBatch
from dreamengine.guidance import GUIDANCES
from dreamengine.guidance.ddim import ddim_invert
from dreamengine.teachers.deepfloyd_if import DeepFloydIFTeacher
from dreamengine.teachers.toyworld import ToyWorldTeacher

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.manual_seed(0)
    teacher = ToyWorldTeacher(resolution=32)
    bank = teacher.bank.float().view(-1, 3, 32, 32)
    entry = int(teacher.embed(["a red cube"])[0].nonzero()[3])
    truth = bank[entry:entry + 1]
    abar = teacher.alphas_cumprod
    lines = [f"# Toy-teacher gradients of the inversion methods ({time.strftime('%Y-%m-%d')}, bench/toy_gradients.py)",
             "", "## 1. Implied noise of ISM's x_s (rms; 1 is a proper noised point)", "",
             "| inversion starts at | s = 220 | s = 300 | s = 500 | s = 800 |", "|---|---:|---:|---:|---:|"]
    shifted = torch.roll(truth, shifts=2, dims=-1)
    e_inv = teacher.embed([""])
    for floor in (0, 25, 50, 100, 200):
        row = []
        for s in (220, 300, 500, 800):
            x = ddim_invert(teacher, shifted, torch.randn_like(shifted), s, e_inv, 200, 5, floor=floor)
            row.append(float(((x - abar[s].sqrt() * shifted) / (1 - abar[s]).sqrt()).pow(2).mean().sqrt()))
        lines.append(f"| t = {floor} | " + " | ".join(f"{v:.2f}" for v in row) + " |")

    z = shifted * 0.9
    rgb0 = ((z + 1) / 2).permute(0, 2, 3, 1)
    prompts = PromptBatch(teacher.embed(["a red cube, side view"]), teacher.embed([""]), ["p"])
    cases = [("sds", SDSConfig(guidance_scale=7.5, max_step_percent=[0.98, 0.5, 400])),
             ("bsd", BSDConfig(warmup_steps=400)),
             ("ism (source: inversion from ~0)", ISMConfig(warmup_steps=400)),
             ("ism, inversion_floor 100", ISMConfig(warmup_steps=400, inversion_floor=100)),
             ("ism, floor 100, delta_t 200", ISMConfig(warmup_steps=400, inversion_floor=100, delta_t=200,
                                                        delta_t_start=200)),
             ("csm, inversion_floor 100", CSMConfig(warmup_steps=400, inversion_floor=100))]
    header = ["| method | step | cos(E g, render - truth) | mean per-draw cos | SNR |", "|---|---:|---:|---:|---:|"]
    lines += ["", "## 2. Gradient on a render 2 px off a true red-cube view (48 draws)", "", *header]
    lines += gradient_rows(teacher, prompts, cases, rgb0, z - truth)

    learned = DeepFloydIFTeacher("builtin:toy-learned", device="cpu", dtype="float32", resolution=32)
    lines += ["", "## 3. What the teacher reads at ISM's x_s: |x0(x_s) - z| and |x0(x_s) - truth| / |z - truth|",
              "", "Mean over 16 inversion noises; 0 / 1 is the render kept, 1 / 0 the truth recalled; ISM's step "
              "is a step towards the data only when the first is small.", "",
              "| teacher, inversion start | s = 100 | s = 300 | s = 500 |", "|---|---|---|---|"]
    for label, model, floor in (("exact, ~0 (source)", teacher, 0), ("exact, t = 100", teacher, 100),
                                ("learned, ~0 (source)", learned, 0)):
        row = []
        for s in (100, 300, 500):
            e_inv = model.embed([""])
            kept, recalled = [], []
            for k in range(16):
                noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(k))
                x_s = ddim_invert(model, z, noise, s, e_inv, 200, 5, floor=floor)
                a_s = model.alphas_cumprod[s]
                e_s = model.predict_noise(x_s, torch.full((1,), s), e_inv, None)
                x0 = (x_s - (1 - a_s).sqrt() * e_s) / a_s.sqrt()
                kept.append(float((x0 - z).norm() / (z - truth).norm()))
                recalled.append(float((x0 - truth).norm() / (z - truth).norm()))
            row.append(f"{sum(kept) / 16:.2f} / {sum(recalled) / 16:.2f}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")

    learned_prompts = PromptBatch(learned.embed(["a red cube, side view"]), learned.embed([""]), ["p"])
    lines += ["", "## 4. Section 2 through the learned toy teacher (builtin:toy-learned, 48 draws)", "", *header]
    learned_cases = [*cases[:3], ("csm (source: inversion from ~0)", CSMConfig(warmup_steps=400))]
    lines += gradient_rows(learned, learned_prompts, learned_cases, rgb0, z - truth)
    table = "\n".join(lines) + "\n"
    print(table)
    out = REPO / "bench" / "results" / "toy_gradients.md"
    out.write_text(table)


def gradient_rows(teacher, prompts: PromptBatch, cases: list, rgb0: torch.Tensor, error: torch.Tensor) -> list[str]:
    """Table rows: per (method, config) and training step, the mean gradient's cosine with the render's error
    [1, 3, H, W], the mean per-draw cosine and the signal-to-noise ratio over 48 draws."""
    direction = error.flatten()
    rows = []
    for name, cfg in cases:
        guidance = GUIDANCES[cfg.name](cfg, teacher, 600)
        for step in (100, 300, 500):
            grads = []
            for k in range(48):
                rgb = rgb0.clone().requires_grad_()
                guidance(rgb, prompts, None, step, torch.Generator().manual_seed(k)).loss.backward()
                grads.append(rgb.grad.permute(0, 3, 1, 2).flatten())
            g = torch.stack(grads)
            mean = g.mean(0)
            cos = float(torch.nn.functional.cosine_similarity(mean, direction, dim=0))
            per_draw = float(torch.nn.functional.cosine_similarity(g, direction[None], dim=1).mean())
            snr = float(mean.norm() / (g - mean).pow(2).sum(1).mean().sqrt())
            rows.append(f"| {name} | {step} | {cos:+.3f} | {per_draw:+.3f} | {snr:.2f} |")
    return rows


if __name__ == "__main__":
    main()
