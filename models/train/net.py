"""Plain-conv CNN for tract on CPU (no depthwise, no residual Adds).

Every conv is Conv(bias=False) + BatchNorm + ReLU; BatchNorm folds into the conv
at export, ReLU fuses into the int8 QLinearConv. The last conv block's ReLU
output ("cam" tensor, stride 8 -> 16x16 for a 128x128 input) feeds
GlobalAveragePool + Linear (Gemm), which stay in f32.
"""
import torch
import torch.nn as nn

# (out_channels, stride) per conv; total stride 8 -> 16x16 CAM for a 128x128 input
ARCHS = {
    # s: 128 -> 64 -> 64 -> 32 -> 32 -> 16 -> 16 -> 16; 68 M MAC. int8 no faster than f32 in tract
    # (convs too narrow); used by the shortcut fixture model.
    "s": [(16, 2), (24, 1), (32, 2), (48, 1), (64, 2), (64, 1), (96, 1)],
    "m": [(16, 2), (32, 1), (48, 2), (48, 1), (96, 2), (96, 1), (128, 1)],
    # w (surface-defect default): 128 -> 64 -> 64 -> 32 -> 32 -> 16 -> 16 -> 16; 287 M MAC. The front
    # end of s (16, 24 @ 64x64; 32, 64 @ 32x32), then wide 3x3 convs at 16x16 (128-256 channels):
    # tract's per-tensor int8 QLinearConv is ~2x faster than f32 there (measured, README
    # "Choosing the architecture").
    "w": [(16, 2), (24, 1), (32, 2), (64, 1), (128, 2), (256, 1), (256, 1)],
    # w0: cheaper variant (257 M MAC, one 64x64 and one 32x32 conv only); tried first, same recipe:
    # 96.75 % held-out (misses faint scratches/cracks), below the 97 % gate.
    "w0": [(16, 2), (32, 2), (64, 2), (128, 1), (256, 1), (256, 1)],
}


class DefectNet(nn.Module):
    def __init__(self, arch="s", n_classes=5):
        super().__init__()
        layers = []
        cin = 3
        for cout, stride in ARCHS[arch]:
            layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.cam_layer = self.features[-1]          # ReLU module whose output is the CAM tensor
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, n_classes)
        self.n_features = cin

    def forward(self, x):
        f = self.features(x)
        return self.head(torch.flatten(self.pool(f), 1))
