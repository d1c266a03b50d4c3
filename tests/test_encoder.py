"""The ResNet encoder and SparK masked pretraining (tiny: resnet18 at 32 x 32)."""

from __future__ import annotations

import pytest
import torch

from cdiff_cli.config import EncoderConfig
from cdiff_cli.models.encoder import STAGES, Encoder
from cdiff_cli.models.spark import SparK, patch_size_for, resize_mask

CFG = EncoderConfig(arch="resnet18", z_dim=16, spark_mask_ratio=0.65, spark_patch=32)



def make(seed: int = 0, in_channels: int = 1) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(CFG, in_channels=in_channels)


def batch(b: int = 4, hw: int = 32, c: int = 1) -> torch.Tensor:
    return torch.rand(b, c, hw, hw, generator=torch.Generator().manual_seed(0))


def blobs(b: int = 4, hw: int = 32) -> torch.Tensor:
    """Smooth toy 'slices': a bright disc at a random place on a darker ramp, in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, hw), torch.linspace(0, 1, hw), indexing="ij")
    c = torch.rand(b, 2, 1, 1, generator=g) * 0.6 + 0.2
    disc = ((yy - c[:, :1]) ** 2 + (xx - c[:, 1:]) ** 2 < 0.06).float()
    return (0.3 * xx + 0.6 * disc).clamp(0, 1)  # (B, 1, H, W)


def test_encoder_shape_and_unit_norm() -> None:
    enc = make()
    z = enc(batch())
    assert z.shape == (4, 16) and enc.feature_dim == 512
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    assert enc.backbone.conv1.in_channels == 1 and enc.stage_channels == (64, 128, 256, 512)
    assert make(in_channels=3)(batch(2, 32, 3)).shape == (2, 16)


def test_resnet50_head() -> None:
    enc = Encoder(EncoderConfig(arch="resnet50", z_dim=128))
    assert enc.feature_dim == 2048 and enc.backbone.fc.out_features == 128
    assert enc.stage_channels == (256, 512, 1024, 2048)


def test_patch_size_adapts_to_the_image() -> None:
    assert patch_size_for(96, 96, 32) == 32  # 3 x 3 patches, as the reference
    assert patch_size_for(32, 32, 32) == 16  # at least 2 x 2
    assert patch_size_for(100, 100, 32) == 25
    assert patch_size_for(40, 72, 32) == 8


def test_masked_view_hides_the_requested_fraction() -> None:
    spark = SparK(make(), CFG, decoder_width=32)
    x = batch(3, 64) * 0.5 + 0.25  # no zeros of its own
    v = spark.masked_view(x, torch.Generator().manual_seed(0))
    hidden = (v == 0).float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(hidden, torch.full((3,), 3 / 4))  # round(0.65 * 4) of 2 x 2 patches
    keep = v != 0
    assert torch.equal(v[keep], x[keep])
    again = spark.masked_view(x, torch.Generator().manual_seed(0))
    assert torch.equal(v, again)


def test_every_layer_is_masked_and_nothing_leaks() -> None:
    enc = make()
    spark = SparK(enc, CFG, decoder_width=32)
    x = batch(2, 64)
    active = spark.random_mask(x, torch.Generator().manual_seed(1))  # (2, 1, 2, 2)
    seen: dict[str, torch.Tensor] = {}
    names = ["conv1", "bn1", "maxpool", *STAGES, "layer2.0.conv1", "layer3.0.bn2", "layer4.0.downsample.1"]
    with spark.sparse(active):  # our hooks run after SparK's: they see what the next layer gets
        hooks = [enc.backbone.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
                 for n in names]
        enc.stages(x, input_mask=resize_mask(active, (64, 64)).float())
    for h in hooks:
        h.remove()
    for n in names:
        out = seen[n]
        keep = resize_mask(active, tuple(out.shape[-2:])).expand_as(out)
        assert out[~keep].abs().max() == 0, f"{n} has values at hidden positions"
        assert out[keep].abs().sum() > 0, f"{n} is empty at visible positions"
    # hidden content cannot reach the visible features (sparse convolution)
    x2 = x.clone()
    x2[~resize_mask(active, (64, 64)).expand_as(x)] = 1.0
    enc.eval()
    with spark.sparse(active):
        f1 = enc.stages(x, input_mask=resize_mask(active, (64, 64)).float())
        f2 = enc.stages(x2, input_mask=resize_mask(active, (64, 64)).float())
    for a, b in zip(f1, f2):
        assert torch.equal(a, b)


def test_sparse_mode_is_undone_after_the_context() -> None:
    enc = make().eval()
    spark = SparK(enc, CFG, decoder_width=32)
    x = batch(2, 32)
    before = enc(x)
    spark.loss(x)
    assert not any(m._forward_hooks for m in enc.modules())
    assert all("forward" not in vars(m) for m in enc.modules())
    torch.testing.assert_close(enc(x), before)


def test_spark_loss_finite_and_decreasing() -> None:
    spark = SparK(make(), CFG, decoder_width=32)
    x = blobs(4, 32)
    opt = torch.optim.Adam(spark.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss, logs = spark.loss(x, torch.Generator().manual_seed(0))  # same mask each step
        assert torch.isfinite(loss) and set(logs) == {"spark_mse", "mask_ratio"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert logs["mask_ratio"].item() == pytest.approx(0.75)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in spark.encoder.parameters())


def test_spark_loss_only_counts_hidden_patches() -> None:
    spark = SparK(make(), CFG, decoder_width=32, norm_pix=False)
    x = batch(2, 32)
    active = spark.random_mask(x, torch.Generator().manual_seed(3))
    rec = spark(x, active)
    assert rec.shape == x.shape
    g = torch.Generator().manual_seed(3)
    loss, _ = spark.loss(x, g)
    hidden = ~resize_mask(active, (32, 32))
    expect = (rec - spark.encoder.prepare(x)).square()[hidden].mean()
    torch.testing.assert_close(loss, expect, atol=1e-5, rtol=1e-4)


def test_z_is_raw_when_normalize_z_is_off() -> None:
    torch.manual_seed(0)
    enc = Encoder(CFG.model_copy(update={"normalize_z": False}))
    z = enc(batch())
    assert not torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-3)  # the fc output itself
    torch.testing.assert_close(z, enc.backbone.fc(enc.features(batch())))


@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_hidden_patches_take_the_fill_intensity_at_the_stem(fill: float) -> None:
    cfg = CFG.model_copy(update={"spark_fill": fill})
    torch.manual_seed(0)
    spark = SparK(Encoder(cfg), cfg, decoder_width=32)
    x = batch(2, 32) * 0.5 + 0.25
    active = spark.random_mask(x, torch.Generator().manual_seed(1))
    seen: list[torch.Tensor] = []
    spark.encoder.backbone.conv1.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
    spark(x, active)
    hidden = ~resize_mask(active, (32, 32))  # (B, 1, H, W)
    stem_in = seen[0]  # the encoder's [-1, 1] input
    assert torch.all(stem_in[hidden] == 2 * fill - 1)  # 0: the background (-1), 0.5: mid-grey (0)
    torch.testing.assert_close(stem_in[~hidden], (2 * x - 1)[~hidden])


def test_norm_pix_follows_the_recipe() -> None:
    assert SparK(make(), CFG, decoder_width=32).norm_pix is True
    off = CFG.model_copy(update={"spark_norm_pix": False})
    assert SparK(Encoder(off), off, decoder_width=32).norm_pix is False
