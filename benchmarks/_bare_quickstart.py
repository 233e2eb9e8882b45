"""The bare reference for the quickstart: the same training written by hand, without plugtrain.

scikit-learn's digits (x4 upscaled, 20 % held out), timm resnet18 (1 channel, 10 classes), the quickstart's
pipeline (Affine, Resize 32, Normalize) in a DataLoader with 2 persistent workers, AdamW (lr 3e-3, weight decay
0.05), label-smoothed cross-entropy, gradient clipping at 1.0, batch 64, validation (loss, accuracy) every epoch.

``--first-step``: stop after one batch forward, backward and optimizer step (``startup.py``'s reference for time to
the first step). Otherwise one line per epoch, ``epoch N/M ...`` (``memory.py`` samples RSS there).
"""

from __future__ import annotations

import argparse

import albumentations as A
import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


class Digits(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: A.Compose) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.transform(image=self.images[i])["image"]
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.targets[i])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=0, help="cut each epoch to this many steps (0: all)")
    p.add_argument("--first-step", action="store_true")
    args = p.parse_args()

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8).repeat(4, axis=1).repeat(4, axis=2)[..., None]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    n_val = len(images) // 5
    val_idx, train_idx = order[:n_val], order[n_val:]
    norm = A.Normalize(mean=[0.5], std=[0.5], max_pixel_value=255.0)
    train_tf = A.Compose([A.Affine(translate_percent=(-0.08, 0.08), rotate=(-10, 10), p=0.7), A.Resize(32, 32), norm],
                         seed=0)
    val_tf = A.Compose([A.Resize(32, 32), norm], seed=0)
    kw = dict(batch_size=64, num_workers=2, persistent_workers=True)
    train_loader = torch.utils.data.DataLoader(Digits(images[train_idx], digits.target[train_idx], train_tf),
                                               shuffle=True, drop_last=True, **kw)
    val_loader = torch.utils.data.DataLoader(Digits(images[val_idx], digits.target[val_idx], val_tf), **kw)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    for epoch in range(1, args.epochs + 1):
        model.train()
        loss_sum, steps = torch.zeros(()), 0
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if args.first_step:
                return
            loss_sum += loss.detach()
            steps += 1
            if steps == args.max_steps:
                break
        model.eval()
        correct, n = 0, 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
                n += len(y)
        print(f"epoch {epoch}/{args.epochs}  train/loss={float(loss_sum) / steps:.4f}  val/accuracy={correct / n:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
