"""StyleGAN3 synthesis network: Fourier-feature input, then alias-free modulated layers, then ToRGB."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .batch_parts import run_in_parts
from .filters import design_lowpass_filter
from .layers import FullyConnectedLayer


def _compute_dtype(
    use_low_precision: bool, x: torch.Tensor, low_dtype: torch.dtype | None, force_fp32: bool
) -> torch.dtype:
    """float32 on CPU or when forced; the low-precision dtype on CUDA for the layers that allow it.

    low_dtype None means no low precision at all; the network passes it only for CUDA inputs
    (or on CPU when its `low_precision_on_cpu` switch is set, for tests).
    """
    if use_low_precision and not force_fp32 and low_dtype is not None:
        return low_dtype
    return torch.float32


class SynthesisInput(nn.Module):
    """Fourier features with random frequencies/phases, rotated and translated per sample by w."""

    def __init__(
        self,
        w_dim: int,  # intermediate latent width
        channels: int,  # number of Fourier features / output channels
        size: int | tuple[int, int],  # output size (width, height) incl. margin
        sampling_rate: float,  # output sampling rate
        bandwidth: float,  # maximal frequency of the features
    ) -> None:
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = np.broadcast_to(np.asarray(size), [2]).astype(int)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn([channels, 2])
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = torch.rand([channels]) - 0.5
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))  # user transform (inverse of translate/rotate)
        self.register_buffer("freqs", freqs)  # [C, 2]
        self.register_buffer("phases", phases)  # [C]

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # [N, w_dim] -> [N, C, H, W]
        n = w.shape[0]
        freqs = self.freqs.unsqueeze(0)  # [1, C, 2]
        phases = self.phases.unsqueeze(0)  # [1, C]
        t = self.affine(w)  # [N, 4]: (cos, sin, tx, ty) up to scale
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        zero, one = torch.zeros_like(t[:, 0]), torch.ones_like(t[:, 0])
        m_r = torch.stack([t[:, 0], -t[:, 1], zero, t[:, 1], t[:, 0], zero, zero, zero, one], 1).reshape(n, 3, 3)
        m_t = torch.stack([one, zero, -t[:, 2], zero, one, -t[:, 3], zero, zero, one], 1).reshape(n, 3, 3)
        transforms = m_r @ m_t @ self.transform.unsqueeze(0)  # [N, 3, 3]
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)  # [N, C]
        freqs = freqs @ transforms[:, :2, :2]  # [N, C, 2]
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * self.size[0] / self.sampling_rate
        theta[1, 1] = 0.5 * self.size[1] / self.sampling_rate
        grid = F.affine_grid(theta.unsqueeze(0), [1, 1, int(self.size[1]), int(self.size[0])], align_corners=False)
        x = (grid.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (2 * math.pi)) * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # [N, C, H, W], channels_last in memory

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={list(self.size)}, sampling_rate={self.sampling_rate:g}"


class SynthesisLayer(nn.Module):
    """Modulated conv -> (bias) -> upsample -> leaky ReLU -> downsample; or ToRGB (1x1, linear)."""

    def __init__(
        self,
        w_dim: int,  # intermediate latent width
        is_torgb: bool,  # the last (ToRGB) layer?
        is_critically_sampled: bool,  # cutoff == Nyquist (last layers)?
        use_fp16: bool,  # may run in low precision on CUDA
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        in_size: int | tuple[int, int],  # input size incl. margin
        out_size: int | tuple[int, int],  # output size incl. margin
        in_sampling_rate: float,  # input sampling rate
        out_sampling_rate: float,  # output sampling rate
        in_cutoff: float,  # input cutoff frequency
        out_cutoff: float,  # output cutoff frequency
        in_half_width: float,  # input transition band half-width
        out_half_width: float,  # output transition band half-width
        conv_kernel: int = 3,  # convolution kernel size (ToRGB: always 1)
        filter_size: int = 6,  # taps per sampling-rate ratio of the up/down filters
        lrelu_upsampling: int = 2,  # extra upsampling around the nonlinearity
        use_radial_filters: bool = False,  # radial (jinc) down filter unless critically sampled
        conv_clamp: float | None = 256,  # clamp activations to +-conv_clamp
        magnitude_ema_beta: float = 0.999,  # decay of the input magnitude average
    ) -> None:
        super().__init__()
        self.w_dim, self.is_torgb, self.is_critically_sampled = w_dim, bool(is_torgb), bool(is_critically_sampled)
        self.use_fp16 = bool(use_fp16)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size = np.broadcast_to(np.asarray(in_size), [2]).astype(int)
        self.out_size = np.broadcast_to(np.asarray(out_size), [2]).astype(int)
        self.in_sampling_rate, self.out_sampling_rate = in_sampling_rate, out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.in_cutoff, self.out_cutoff = in_cutoff, out_cutoff
        self.in_half_width, self.out_half_width = in_half_width, out_half_width
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        assert in_sampling_rate * self.up_factor == self.tmp_sampling_rate
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not self.is_torgb else 1
        up = design_lowpass_filter(self.up_taps, in_cutoff, in_half_width * 2, self.tmp_sampling_rate)
        self.register_buffer("up_filter", up)

        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        assert out_sampling_rate * self.down_factor == self.tmp_sampling_rate
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not self.is_torgb else 1
        self.down_radial = use_radial_filters and not self.is_critically_sampled
        down = design_lowpass_filter(
            self.down_taps, out_cutoff, out_half_width * 2, self.tmp_sampling_rate, radial=self.down_radial
        )
        self.register_buffer("down_filter", down)

        # Padding in the upsampled domain so the output has exactly out_size samples.
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = (int(pad_lo[0]), int(pad_hi[0]), int(pad_lo[1]), int(pad_hi[1]))

    def forward(
        self,
        x: torch.Tensor,  # [N, in_channels, in_h, in_w]
        w: torch.Tensor,  # [N, w_dim]
        update_emas: bool = False,  # track magnitude_ema (training)
        force_fp32: bool = False,  # never use low precision
        low_dtype: torch.dtype | None = None,  # the low-precision dtype (None: float32 throughout)
    ) -> torch.Tensor:  # [N, out_channels, out_h, out_w]
        if update_emas:
            with torch.no_grad():
                magnitude_cur = x.detach().to(torch.float32).square().mean()
                self.magnitude_ema.copy_(magnitude_cur.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w)  # [N, in_channels]
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        dtype = _compute_dtype(self.use_fp16, x, low_dtype, force_fp32)
        gain = 1.0 if self.is_torgb else math.sqrt(2)
        slope = 1.0 if self.is_torgb else 0.2
        return ops.modulated_filtered_lrelu(
            x.to(dtype),
            self.weight,
            styles,
            demodulate=not self.is_torgb,
            conv_padding=self.conv_kernel - 1,
            input_gain=input_gain,
            bias=self.bias,
            fu=self.up_filter,
            fd=self.down_filter,
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=gain,
            slope=slope,
            clamp=self.conv_clamp,
        )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, size={self.in_size[0]}->{self.out_size[0]}, "
            f"up={self.up_factor}, down={self.down_factor}, torgb={self.is_torgb}"
        )


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, res, res]."""

    def __init__(
        self,
        w_dim: int,  # intermediate latent width
        img_resolution: int,  # output resolution (power of two)
        img_channels: int,  # output channels (3: RGB)
        channel_base: int = 32768,  # overall channel multiplier
        channel_max: int = 512,  # maximal channels per layer
        num_layers: int = 14,  # layers excluding ToRGB
        num_critical: int = 2,  # critically sampled layers at the end
        first_cutoff: float = 2,  # cutoff of the first layer
        first_stopband: float = 2**2.1,  # stopband of the first layer
        last_stopband_rel: float = 2**0.3,  # last stopband relative to its cutoff
        margin_size: int = 10,  # extra pixels around the image in the intermediate layers
        output_scale: float = 0.25,  # scale of the ToRGB output
        num_fp16_res: int = 4,  # layers at the highest resolutions that may use low precision
        low_precision_dtype: str = "float16",  # "float16" or "bfloat16" (CUDA only)
        channels_last: bool = True,  # run the conv stack in channels_last memory format
        conv_kernel: int = 3,  # layer conv kernel (R config: 1)
        filter_size: int = 6,  # taps per sampling-rate ratio
        lrelu_upsampling: int = 2,  # upsampling around the nonlinearity
        use_radial_filters: bool = False,  # radial down filters (R config)
        conv_clamp: float | None = 256,  # activation clamp
        magnitude_ema_beta: float = 0.999,  # decay of each layer's input magnitude average
    ) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_ws = num_layers + 2
        self.num_layers, self.num_critical, self.margin_size = num_layers, num_critical, margin_size
        self.output_scale, self.num_fp16_res, self.channels_last = output_scale, num_fp16_res, channels_last
        self.low_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[low_precision_dtype]
        self.low_precision_on_cpu = False  # tests only: allow the low-precision path on CPU

        # Geometric progression of cutoffs and stopbands, from the first layer to the last.
        last_cutoff = img_resolution / 2
        last_stopband = last_cutoff * last_stopband_rel
        exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
        cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
        stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + margin_size * 2
        sizes[-2:] = img_resolution
        channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
        channels[-1] = img_channels

        self.input = SynthesisInput(
            w_dim=w_dim,
            channels=int(channels[0]),
            size=int(sizes[0]),
            sampling_rate=sampling_rates[0],
            bandwidth=cutoffs[0],
        )
        self.layer_names: list[str] = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim,
                is_torgb=idx == num_layers,
                is_critically_sampled=idx >= num_layers - num_critical,
                use_fp16=bool(sampling_rates[idx] * (2**num_fp16_res) > img_resolution),
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=int(sizes[prev]),
                out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]),
                out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=float(cutoffs[prev]),
                out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]),
                out_half_width=float(half_widths[idx]),
                conv_kernel=conv_kernel,
                filter_size=filter_size,
                lrelu_upsampling=lrelu_upsampling,
                use_radial_filters=use_radial_filters,
                conv_clamp=conv_clamp,
                magnitude_ema_beta=magnitude_ema_beta,
            )
            name = f"L{idx}_{layer.out_size[0]}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(
        self,
        ws: torch.Tensor,  # [N, num_ws, w_dim]
        update_emas: bool = False,  # track magnitude_ema (training)
        force_fp32: bool = False,  # never use low precision
        noise_mode: str = "const",  # accepted for compatibility with StyleGAN2 callers; StyleGAN3 has no noise
    ) -> torch.Tensor:  # [N, img_channels, img_resolution, img_resolution]
        del noise_mode
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        n = ws.shape[0]
        if update_emas or ops.using_plain_ops() or ws.device.type != "cpu":
            return self._run(ws, update_emas, force_fp32)
        # On the CPU: large images run the whole stack one part of the batch at a time, so every
        # intermediate stays small (allocation and cache, see ops/filtered_lrelu.py); without a
        # gradient the parts share the threads (batch_parts.py). Not when updating the magnitude
        # EMAs: each layer uses its EMA updated from the whole batch.
        return run_in_parts(lambda a, b: self._run(ws[a:b], False, force_fp32), n, self._batch_chunk(n), ws.device)

    def _batch_chunk(self, n: int) -> int:
        """Samples per chunk so that no layer's conv output exceeds the chunk budget."""
        from .ops.modulated_conv import LAYER_CHUNK_BYTES

        largest = 0
        for name in self.layer_names:
            layer = getattr(self, name)
            size = layer.in_size + layer.conv_kernel - 1
            largest = max(largest, layer.out_channels * int(size[0]) * int(size[1]) * 4)
        return max(1, min(n, LAYER_CHUNK_BYTES // largest))

    def _run(
        self,
        ws: torch.Tensor,  # [n, num_ws, w_dim]
        update_emas: bool,  # update the magnitude EMAs (training)
        force_fp32: bool,  # never use low precision
    ) -> torch.Tensor:  # [n, img_channels, res, res]
        ws_list = ws.to(torch.float32).unbind(1)
        x = self.input(ws_list[0])
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        for name, w in zip(self.layer_names, ws_list[1:], strict=True):
            layer = getattr(self, name)
            low = self.low_dtype if (x.device.type == "cuda" or self.low_precision_on_cpu) else None
            x = layer(x, w, update_emas=update_emas, force_fp32=force_fp32, low_dtype=low)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32).contiguous()
