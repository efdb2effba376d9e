"""The two small networks of A1111's face restoration helper, as facexlib builds them.

A1111 finds and pastes faces with facexlib's ``FaceRestoreHelper``: RetinaFace (ResNet-50)
for the boxes and five landmarks (``detection_Resnet50_Final.pth``) and ParseNet for the
mask the restored face is blended with (``parsing_parsenet.pth``). We build the same two
networks here, with the same state-dict keys, so the files A1111 keeps load as they are,
without facexlib: it pulls in OpenCV, numba and filterpy, and downloads the weights itself.

The layouts follow facexlib 0.3.0 (MIT License, Copyright (c) 2021 Xintao Wang):
``facexlib/detection/retinaface_net.py``, ``retinaface.py``, ``retinaface_utils.py`` (after
biubug6/Pytorch_Retinaface, MIT) and ``facexlib/parsing/parsenet.py`` (after PSFRGAN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# -- RetinaFace (ResNet-50) -------------------------------------------------------------------

# facexlib's cfg_re50: anchors per level, their strides, the box/landmark variances
_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
_STEPS = (8, 16, 32)
_VARIANCES = (0.1, 0.2)
# the BGR means RetinaFace was trained with (facexlib subtracts them from 0..255 BGR)
BGR_MEAN = (104.0, 117.0, 123.0)


def _conv_bn(cin: int, cout: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def _conv_bn_no_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))


def _conv_bn1x1(cin: int, cout: int, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, 1, padding=0, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class _SSH(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.conv3X3 = _conv_bn_no_relu(cin, cout // 2)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn_no_relu(cout // 4, cout // 4)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn_no_relu(cout // 4, cout // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        out = torch.cat(
            [self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(self.conv7X7_2(c5_1))], dim=1
        )
        return F.relu(out)


class _FPN(nn.Module):
    def __init__(self, cins: tuple[int, int, int], cout: int) -> None:
        super().__init__()
        leaky = 0.1 if cout <= 64 else 0.0
        self.output1 = _conv_bn1x1(cins[0], cout, leaky=leaky)
        self.output2 = _conv_bn1x1(cins[1], cout, leaky=leaky)
        self.output3 = _conv_bn1x1(cins[2], cout, leaky=leaky)
        self.merge1 = _conv_bn(cout, cout, leaky=leaky)
        self.merge2 = _conv_bn(cout, cout, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class _Head(nn.Module):
    def __init__(self, cin: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """RetinaFace with a ResNet-50 body: facexlib's ``RetinaFace(network_name='resnet50')``.

    ``forward`` takes BGR pixels (0..255) minus ``BGR_MEAN``, N x 3 x H x W, and gives
    (box offsets N x P x 4, class scores N x P x 2 after softmax, landmark offsets N x P x 10)
    for the P anchors of ``priors``."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models._utils import IntermediateLayerGetter

        self.body = IntermediateLayerGetter(
            resnet50(weights=None), {"layer2": 1, "layer3": 2, "layer4": 3}
        )
        self.fpn = _FPN((512, 1024, 2048), 256)
        self.ssh1 = _SSH(256, 256)
        self.ssh2 = _SSH(256, 256)
        self.ssh3 = _SSH(256, 256)
        self.ClassHead = nn.ModuleList(_Head(256, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(256, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(256, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(list(self.body(x).values()))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        scores = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        marks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return boxes, F.softmax(scores, dim=-1), marks


def priors(height: int, width: int) -> torch.Tensor:
    """facexlib's ``PriorBox``: P x 4 anchors (cx, cy, w, h), relative to the image."""
    out = []
    for sizes, step in zip(_MIN_SIZES, _STEPS, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy, cx = torch.meshgrid(
            (torch.arange(fh, dtype=torch.float64) + 0.5) * step / height,
            (torch.arange(fw, dtype=torch.float64) + 0.5) * step / width,
            indexing="ij",
        )
        per = [
            torch.stack(
                [cx, cy, torch.full_like(cx, s / width), torch.full_like(cy, s / height)], dim=-1
            )
            for s in sizes
        ]
        # anchors cell by cell, both sizes of a cell together (facexlib's loop order)
        out.append(torch.stack(per, dim=2).reshape(-1, 4))
    return torch.cat(out).float()


def decode(
    loc: torch.Tensor, marks: torch.Tensor, anchors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (P x 4: x0, y0, x1, y1) and landmarks (P x 10), relative to the image."""
    v0, v1 = _VARIANCES
    centre = anchors[:, :2] + loc[:, :2] * v0 * anchors[:, 2:]
    size = anchors[:, 2:] * torch.exp(loc[:, 2:] * v1)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    pts = marks.view(-1, 5, 2) * v0 * anchors[:, None, 2:] + anchors[:, None, :2]
    return boxes, pts.reshape(-1, 10)


# -- ParseNet ----------------------------------------------------------------------------------

# facexlib's MASK_COLORMAP: which of the 19 parsing classes belong to the pasted face
# (background, neck (14), cloth (16), hair (17) and hat (18) do not)
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)


class _ConvLayer(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        scale: str = "none",
        norm: bool = False,
        relu: bool = False,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.reflection_pad = nn.ReflectionPad2d(1)
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm: nn.Module = _Norm(cout) if norm else nn.Identity()
        self.relu: nn.Module = nn.LeakyReLU(0.2, inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.relu(self.norm(self.conv2d(self.reflection_pad(x))))


class _Norm(nn.Module):
    # facexlib's NormLayer keeps the BatchNorm under ``.norm`` (keys "...norm.norm.weight")
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)  # type: ignore[no-any-return]


class _ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, scale: str = "none") -> None:
        super().__init__()
        self.shortcut_func: nn.Module | None = None
        if scale != "none" or cin != cout:
            self.shortcut_func = _ConvLayer(cin, cout, scale)
        first, second = {"down": ("none", "down"), "up": ("up", "none")}.get(
            scale, ("none", "none")
        )
        self.conv1 = _ConvLayer(cin, cout, first, norm=True, relu=True)
        self.conv2 = _ConvLayer(cout, cout, second, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))  # type: ignore[no-any-return]


class ParseNet(nn.Module):
    """facexlib's ``ParseNet(in_size=512, out_size=512, parsing_ch=19)``: 512 x 512 RGB in
    -1..1 to 19 face-parsing class scores (and an image, unused)."""

    def __init__(self, size: int = 512, base_ch: int = 64, res_depth: int = 10) -> None:
        super().__init__()

        def clip(c: int) -> int:
            return max(32, min(c, 256))

        steps = int(math.log2(size // min(size, 32)))
        encoder: list[nn.Module] = [_ConvLayer(3, base_ch)]
        head = base_ch
        for _ in range(steps):
            encoder.append(_ResidualBlock(clip(head), clip(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(
            *(_ResidualBlock(clip(head), clip(head)) for _ in range(res_depth))
        )
        decoder: list[nn.Module] = []
        for _ in range(steps):
            decoder.append(_ResidualBlock(clip(head), clip(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = _ConvLayer(clip(head), 3)
        self.out_mask_conv = _ConvLayer(clip(head), 19)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.encoder(x)
        x = self.decoder(feat + self.body(feat))
        return self.out_mask_conv(x), self.out_img_conv(x)
