"""LPIPS distance matrices between image sets, with bounded memory.

`lpips.LPIPS.forward(a, b)` runs the trunk on both images of every pair: N^2 trunk passes for the
pairwise distances of N images. Here each image's normalised trunk features are computed once per
block and reused for every pair in the block (written by hand for that reason; the pieces are
lpips's own: `scaling_layer`, `net`, `normalize_tensor`, `lins`, `upsample`). Blocks are sized from
a memory budget, so a VGG trunk at 256 px (about 32 MB of features per image) never holds more
than the budget, whatever the set size.

Two distances come out of the same features:

* global: LPIPS as `lpips.LPIPS(spatial=False)` computes it (per layer: spatial mean of the
  linear head applied to the squared feature difference; summed over layers);
* region: the spatial LPIPS map (`spatial=True`: each layer's map upsampled to the image size,
  summed) averaged over the union of the two images' anomaly masks, i.e. LPIPS on the anomaly
  region only (IC-LPIPS(a), SeaS appendix A.3 "Metrics"). NaN when both masks are empty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

# loads items (by index) -> images float B x 3 x H x W in [-1, 1], masks bool B x H x W
Loader = Callable[[Sequence[int]], tuple[torch.Tensor, torch.Tensor]]


class LPIPSDistance:
    def __init__(self, model, memory_budget_mb: float = 512, batch_size: int = 8):
        self.model = model
        self.budget = memory_budget_mb * 2**20
        self.batch_size = batch_size
        self._bytes_per_image: int | None = None
        self.trunk_passes = 0  # images sent through the trunk (for the perf script)

    # -- features --------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        import lpips

        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            layers = self.model.net.forward(self.model.scaling_layer(chunk))
            out.append([lpips.normalize_tensor(f) for f in layers])
            self.trunk_passes += len(chunk)
        feats = [torch.cat([o[k] for o in out]) for k in range(len(out[0]))]
        if self._bytes_per_image is None:
            self._bytes_per_image = sum(f[0].numel() * f.element_size() for f in feats)
        return feats

    def block_size(self, images_shape: tuple[int, ...]) -> int:
        """Images per block so that two blocks of features fit the memory budget."""
        if self._bytes_per_image is None:
            self.features(torch.zeros(1, *images_shape[1:]))
            self.trunk_passes -= 1
        return max(1, int(self.budget // (2 * self._bytes_per_image)))

    @torch.no_grad()
    def _pair_block(self, fa, ma, fb, mb, size) -> tuple[np.ndarray, np.ndarray]:
        """Global and region distances between every image of block a and every image of block b."""
        import lpips

        na, nb = len(ma), len(mb)
        glob = np.zeros((na, nb))
        region = np.full((na, nb), np.nan)
        for i in range(na):
            spatial = torch.zeros(nb, 1, *size)
            total = torch.zeros(nb)
            for k, lin in enumerate(self.model.lins):
                head = lin((fa[k][i:i + 1] - fb[k]) ** 2)  # nb x 1 x h x w
                total += head.mean(dim=(1, 2, 3))
                spatial += lpips.upsample(head, out_HW=size)
            glob[i] = total.double().numpy()
            union = (ma[i:i + 1] | mb).unsqueeze(1)  # nb x 1 x H x W
            area = union.sum(dim=(1, 2, 3))
            masked = (spatial * union).sum(dim=(1, 2, 3)) / area.clamp(min=1)
            region[i] = torch.where(area > 0, masked, torch.nan).double().numpy()
        return glob, region

    # -- matrices ----------------------------------------------------------------------------
    def cross(self, load_a: Loader, n_a: int, load_b: Loader, n_b: int) -> tuple[np.ndarray, np.ndarray]:
        """(global, region) distances, n_a x n_b."""
        glob, region = np.zeros((n_a, n_b)), np.full((n_a, n_b), np.nan)
        if n_a == 0 or n_b == 0:
            return glob, region
        probe, _ = load_b([0])
        block = self.block_size(tuple(probe.shape))
        cached_b = None
        for a0 in range(0, n_a, block):
            ia = list(range(a0, min(n_a, a0 + block)))
            images_a, masks_a = load_a(ia)
            fa = self.features(images_a)
            size = tuple(images_a.shape[2:])
            for b0 in range(0, n_b, block):
                ib = list(range(b0, min(n_b, b0 + block)))
                if cached_b is not None and n_b <= block:
                    fb, masks_b = cached_b
                else:
                    images_b, masks_b = load_b(ib)
                    fb = self.features(images_b)
                    if n_b <= block:  # all of b fits in one block: keep it for every block of a
                        cached_b = (fb, masks_b)
                g, r = self._pair_block(fa, masks_a, fb, masks_b, size)
                glob[ia[0]:ia[-1] + 1, ib[0]:ib[-1] + 1] = g
                region[ia[0]:ia[-1] + 1, ib[0]:ib[-1] + 1] = r
        return glob, region

    def pairwise(self, load: Loader, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(global, region) distances among n images, n x n, symmetric, zero diagonal; only the
        block pairs on and above the diagonal go through the trunk."""
        glob, region = np.zeros((n, n)), np.full((n, n), np.nan)
        if n < 2:
            return glob, region
        probe, _ = load([0])
        block = self.block_size(tuple(probe.shape))
        starts = list(range(0, n, block))
        for bi, a0 in enumerate(starts):
            ia = list(range(a0, min(n, a0 + block)))
            images_a, masks_a = load(ia)
            fa = self.features(images_a)
            size = tuple(images_a.shape[2:])
            for b0 in starts[bi:]:
                ib = list(range(b0, min(n, b0 + block)))
                if b0 == a0:
                    fb, masks_b = fa, masks_a
                else:
                    images_b, masks_b = load(ib)
                    fb = self.features(images_b)
                g, r = self._pair_block(fa, masks_a, fb, masks_b, size)
                glob[ia[0]:ia[-1] + 1, ib[0]:ib[-1] + 1] = g
                region[ia[0]:ia[-1] + 1, ib[0]:ib[-1] + 1] = r
        glob = np.triu(glob, 1)
        glob = glob + glob.T
        upper = np.triu(np.nan_to_num(region, nan=0.0), 1)
        nan_upper = np.triu(np.isnan(region), 1)
        region = upper + upper.T
        region[nan_upper | nan_upper.T] = np.nan
        np.fill_diagonal(region, 0.0)
        return glob, region
