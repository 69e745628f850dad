"""Does the paper's adversarial term sharpen the tiny autoencoder's small shapes? The shipped
autoencoder fine-tuned with a patch discriminator, then the analyzer after the round trip.

    python bench/autoencoder_adversarial.py --steps 600 --weight 1 --disc-lr 1e-3 --hard 0.5 --out runs/vae-adversarial
    python bench/autoencoder_adversarial.py --decoder-only --steps 1200 --out runs/decoder-adversarial

The LDM paper trains its autoencoders "with a combination of a perceptual loss and a patch-based
adversarial objective" (Rombach et al. 2022, Sec. 3.1, after VQGAN: Esser et al. 2021), so that
reconstructions stay sharp where a pixel loss alone blurs. Here without the perceptual term (LPIPS
needs VGG weights from the internet): stage 1's L1 + MSE + KL, plus λ·(−D(x̃)), where D is a small
PatchGAN trained with the hinge loss and λ is VQGAN's adaptive weight, ‖∇_last L_rec‖ / ‖∇_last L_G‖
at the decoder's last layer, times `--weight`. The batches are stage 1's (`train.autoencoder_batch`,
with `--hard` its `hard_fraction`); one thread, so the figures repeat exactly. Prints the losses
every 50 steps, then the round trip of the 500 + 500 scenes of `bench/autoencoder_variants.py`
(seeds 2024 and 7) and the shape errors by (shape, size); saves the autoencoder to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoencoder_variants import round_trip_scores
from tutorial_ldm.autoencoder import downsampling_factor
from tutorial_ldm.paths import SHIPPED_MODEL
from tutorial_ldm.train import (AutoencoderPass, TrainConfig, autoencoder_batch, photo_bank,
                                reconstruction_loss, step_generator, warmup_cosine)

SEED = 13  # the fine-tune's own batches, not stage 1's


def patch_discriminator() -> nn.Sequential:
    """VQGAN's PatchGAN, two layers shallower for 64×64 images: a 14×14 map of real/fake logits,
    each from a 34×34-pixel patch of convolutions (GroupNorm instead of BatchNorm, so that no
    logit depends on the rest of the batch)."""
    def block(c_in, c_out, stride, norm=True):
        return [nn.Conv2d(c_in, c_out, 4, stride, 1), *([nn.GroupNorm(8, c_out)] if norm else []),
                nn.LeakyReLU(0.2)]
    return nn.Sequential(*block(3, 32, 2, norm=False), *block(32, 64, 2), *block(64, 128, 1),
                         nn.Conv2d(128, 1, 4, 1, 1))


def main() -> None:
    from diffusers import AutoencoderKL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-4, help="the autoencoder's")
    parser.add_argument("--disc-lr", type=float, default=1e-3)
    parser.add_argument("--weight", type=float, default=1.0, help="times the adaptive weight")
    parser.add_argument("--hard", type=float, default=0.5, help="TrainConfig.hard_fraction")
    parser.add_argument("--decoder-only", action="store_true",
                        help="freeze the encoder, so that the latents (and a denoiser trained on "
                             "them) stay the shipped autoencoder's")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(SHIPPED_MODEL / "vae")
    torch.manual_seed(0)
    disc = patch_discriminator()
    if args.decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=args.lr,
                                 betas=(0.5, 0.9))
    disc_optimizer = torch.optim.Adam(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
    schedule = warmup_cosine(50, args.steps)
    cfg = TrainConfig(seed=SEED, hard_fraction=args.hard)
    photos = photo_bank("cpu")
    autoencoder_pass = AutoencoderPass(vae)
    f = downsampling_factor(vae)
    last_layer = vae.decoder.conv_out.weight
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * schedule(step)
        for group in disc_optimizer.param_groups:
            group["lr"] = args.disc_lr * schedule(step)
        x, _ = autoencoder_batch(cfg, step, photos, "cpu")
        noise = torch.randn((len(x), vae.config.latent_channels, x.shape[-2] // f, x.shape[-1] // f),
                            generator=step_generator(SEED, 1, step))
        recon, kl, _ = autoencoder_pass(x, noise)
        reconstruction = reconstruction_loss(recon, x).mean()
        generator_loss = -disc(recon).mean()
        grad_rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0].norm()
        grad_gen = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0].norm()
        weight = (grad_rec / (grad_gen + 1e-4)).clamp(0, 1e4).detach() * args.weight
        loss = reconstruction + weight * generator_loss + cfg.kl_weight * kl.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        disc_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(recon.detach())).mean()
        disc_optimizer.zero_grad()
        disc_loss.backward()
        disc_optimizer.step()
        if step % 50 == 0:
            print(f"step {step}: reconstruction {reconstruction.item():.4f}  λ {weight.item():.3f}  "
                  f"discriminator (hinge; 2 = chance) {disc_loss.item():.3f}", flush=True)
    vae.eval()
    for seed in (2024, 7):
        scores, errors = round_trip_scores(vae, seed)
        print(f"round trip, scenes seed {seed}: " + "  ".join(f"{k} {100 * v:5.1f}%"
              for k, v in scores.items()) + f"  shape errors {dict(errors)}", flush=True)
    vae.save_pretrained(args.out)


if __name__ == "__main__":
    main()
