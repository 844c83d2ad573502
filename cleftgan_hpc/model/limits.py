"""Bounds on what a network file may ask for, checked before anything is allocated.

A network file (an official pickle or our safetensors file) describes each network by its
constructor arguments; the loader builds the modules and then fills in the stored tensors.
Unchecked, a file of a few hundred bytes could ask for terabytes (`channel_max=10**9`), for
hours of work (a mapping network of 10**7 layers) or for filters of 10**12 taps, and only be
refused once the tensors are compared. So every argument is type- and range-checked here, and
the number of parameters the arguments imply is computed by arithmetic (no module is built)
and compared with the tensor elements the file actually carries.

Each limit is far above what the official configs use (noted beside it): no real network
comes near them, and each one keeps a hostile file's demands to seconds and megabytes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import NetworkFormatError

# --- network hyperparameters ---
MAX_RESOLUTION = 4096  # img_resolution, a power of two; official networks go to 1024
MAX_LATENT_DIM = 4096  # z_dim, w_dim; official 512
MAX_LABEL_DIM = 1 << 16  # c_dim (one-hot class labels); class-conditional datasets have ~1000
MAX_IMG_CHANNELS = 64  # img_channels; official 3 (RGB) or 1
MAX_CHANNELS = 4096  # channel_max, cmap_dim, widths of D's condition mapping; official <= 1024
MAX_CHANNEL_BASE = 1 << 20  # channel_base; official 32768 (T) and 65536 (R)
MAX_SYNTHESIS_LAYERS = 64  # synthesis num_layers; official 14
MAX_MAPPING_LAYERS = 64  # mapping num_layers; official 2 (StyleGAN3 G), 8 (StyleGAN2 G, D's condition mapping)
MAX_CONV_KERNEL = 15  # conv_kernel; official 3 (T) and 1 (R)
MAX_FILTER_SIZE = 64  # filter_size (taps per sampling-rate ratio); official 6
MAX_LRELU_UPSAMPLING = 16  # lrelu_upsampling; official 2
MAX_FILTER_TAPS = 1024  # taps of any up/down filter the synthesis designs; official <= 24
MAX_MARGIN = 1024  # margin_size (pixels); official 10
MAX_FP16_RES = 64  # num_fp16_res; official 4
MAX_RESAMPLE_TAPS = 16  # D's 1-D resample filter; official [1, 3, 3, 1]
MAX_MBSTD_GROUP = 1 << 16  # mbstd_group_size; official 4 (or the batch size)
MAX_MBSTD_CHANNELS = 64  # mbstd_num_channels; official 1
MAX_FREEZE_LAYERS = 1024  # freeze_layers; official 0..~20
MAX_FLOAT = 1e9  # magnitude of a float knob (conv_clamp, output_scale, lr_multiplier, ...)
# Parameters one network may have: ~1 GiB of float32. The official 1024x1024 networks have ~30M.
MAX_NETWORK_PARAMETERS = 1 << 28

# --- recorded values (constructor arguments, training_set_kwargs, our JSON metadata) ---
MAX_NESTING_DEPTH = 32  # nested dict/list levels; official arguments nest 2 deep
MAX_VALUE_NODES = 100_000  # values in one structure, a shared one counted at every use
MAX_ARRAY_ELEMENTS = 1 << 16  # elements of a numpy array in such a value; official: (2,) arrays
MAX_ABS_INT = 1 << 63  # integers beyond int64 are not hyperparameters (and JSON chokes on huge ones)
MAX_NAME_CHARS = 256  # a class, tensor or argument name

# --- the pickle stream itself ---
# CPython's unpickler sizes its memo table by the highest slot number a PUT names: five bytes
# (`r` + a 4-byte index) make it allocate and clear up to 64 GiB. Picklers number slots 0, 1, 2...
MAX_MEMO_GAP = 1024  # a PUT may name at most 2 * (slots so far) + this

# --- module records and tensors of an official pickle ---
MAX_MODULE_DEPTH = 16  # nesting of module records; official <= 4
MAX_MODULE_RECORDS = 4096  # module records in one network; an official 1024x1024 G has ~40
MAX_TENSOR_DIMS = 8  # dimensions of a stored tensor; official <= 4

# --- embedded torch storage records ---
MAX_STORAGES_PER_RECORD = 16  # a pickled storage record holds exactly one storage
MAX_ZIP_ENTRIES = 64  # files in a zip-format storage record; torch writes ~6


def one_line(text: str, limit: int = 300) -> str:
    """`text` as one short line, for error messages quoting something the file said."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(value: Any) -> str:
    """repr(value) cut to 60 characters, for an error message naming what the file said."""
    return one_line(repr(value), 60)


# --- argument rules: (kind, a, b) ---------------------------------------------------------------
# kinds: "int" in [a, b]; "pow2" a power of two in [a, b]; "odd" an odd integer in [a, b]; "float"
# finite in [a, b] (ints too); "optint"/"optfloat": the same or None; "bool"; "choice" a string in
# the set a; "oneof": one of the values a (bools and strings, compared with their type);
# "floats": a list of floats, length in [a, b]; "optdict": None or a dict checked against the rules a.
Rule = tuple[str, Any, Any]

G_MAPPING_RULES: dict[str, Rule] = {
    "num_layers": ("int", 0, MAX_MAPPING_LAYERS),
    "lr_multiplier": ("float", 1e-9, MAX_FLOAT),
    "w_avg_beta": ("float", 0.0, 1.0),
}
GENERATOR_RULES: dict[str, Rule] = {
    "z_dim": ("int", 0, MAX_LATENT_DIM),
    "c_dim": ("int", 0, MAX_LABEL_DIM),
    "w_dim": ("int", 1, MAX_LATENT_DIM),
    "img_resolution": ("pow2", 4, MAX_RESOLUTION),
    "img_channels": ("int", 1, MAX_IMG_CHANNELS),
    "mapping_kwargs": ("optdict", G_MAPPING_RULES, None),
    "channel_base": ("int", 1, MAX_CHANNEL_BASE),
    "channel_max": ("int", 1, MAX_CHANNELS),
    "num_layers": ("int", 1, MAX_SYNTHESIS_LAYERS),
    "num_critical": ("int", 0, MAX_SYNTHESIS_LAYERS),
    "first_cutoff": ("float", 1e-3, MAX_RESOLUTION),
    "first_stopband": ("float", 1e-3, 2 * MAX_RESOLUTION),
    "last_stopband_rel": ("float", 1e-3, 64.0),
    "margin_size": ("int", 0, MAX_MARGIN),
    "output_scale": ("float", -MAX_FLOAT, MAX_FLOAT),
    "num_fp16_res": ("int", 0, MAX_FP16_RES),
    "low_precision_dtype": ("choice", {"float16", "bfloat16"}, None),
    "channels_last": ("bool", None, None),
    "conv_kernel": ("int", 1, MAX_CONV_KERNEL),
    "filter_size": ("int", 1, MAX_FILTER_SIZE),
    "lrelu_upsampling": ("int", 1, MAX_LRELU_UPSAMPLING),
    "use_radial_filters": ("bool", None, None),
    "conv_clamp": ("optfloat", 0.0, MAX_FLOAT),
    "magnitude_ema_beta": ("float", 0.0, 1.0),
}
_ACTIVATIONS = {"lrelu", "linear"}
# The StyleGAN2 generator (stylegan2.py): the reference's mapping, synthesis, block and layer
# arguments (Generator(**synthesis_kwargs) passes the block and layer ones through), and ours.
G2_MAPPING_RULES: dict[str, Rule] = {
    **G_MAPPING_RULES,
    "embed_features": ("optint", 1, MAX_CHANNELS),
    "layer_features": ("optint", 1, MAX_CHANNELS),
    "activation": ("choice", _ACTIVATIONS, None),
}
STYLEGAN2_GENERATOR_RULES: dict[str, Rule] = {
    "z_dim": ("int", 0, MAX_LATENT_DIM),
    "c_dim": ("int", 0, MAX_LABEL_DIM),
    "w_dim": ("int", 1, MAX_LATENT_DIM),
    "img_resolution": ("pow2", 4, MAX_RESOLUTION),
    "img_channels": ("int", 1, MAX_IMG_CHANNELS),
    "mapping_kwargs": ("optdict", G2_MAPPING_RULES, None),
    "channel_base": ("int", 1, MAX_CHANNEL_BASE),
    "channel_max": ("int", 1, MAX_CHANNELS),
    "num_fp16_res": ("int", 0, MAX_FP16_RES),
    "low_precision_dtype": ("choice", {"float16", "bfloat16"}, None),
    "channels_last": ("bool", None, None),
    "architecture": ("choice", {"orig", "skip", "resnet"}, None),
    "resample_filter": ("floats", 1, MAX_RESAMPLE_TAPS),
    "conv_clamp": ("optfloat", 0.0, MAX_FLOAT),
    "fp16_channels_last": ("bool", None, None),
    "fused_modconv_default": ("oneof", (True, False, "inference_only"), None),
    "kernel_size": ("odd", 1, MAX_CONV_KERNEL),
    "use_noise": ("bool", None, None),
    "activation": ("choice", _ACTIVATIONS, None),
}
D_BLOCK_RULES: dict[str, Rule] = {
    "activation": ("choice", _ACTIVATIONS, None),
    "resample_filter": ("floats", 1, MAX_RESAMPLE_TAPS),
    "fp16_channels_last": ("bool", None, None),
    "freeze_layers": ("int", 0, MAX_FREEZE_LAYERS),
}
D_MAPPING_RULES: dict[str, Rule] = {
    "num_layers": ("int", 0, MAX_MAPPING_LAYERS),
    "embed_features": ("optint", 1, MAX_CHANNELS),
    "layer_features": ("optint", 1, MAX_CHANNELS),
    "activation": ("choice", _ACTIVATIONS, None),
    "lr_multiplier": ("float", 1e-9, MAX_FLOAT),
}
D_EPILOGUE_RULES: dict[str, Rule] = {
    "mbstd_group_size": ("optint", 1, MAX_MBSTD_GROUP),
    "mbstd_num_channels": ("int", 0, MAX_MBSTD_CHANNELS),
    "activation": ("choice", _ACTIVATIONS, None),
}
DISCRIMINATOR_RULES: dict[str, Rule] = {
    "c_dim": ("int", 0, MAX_LABEL_DIM),
    "img_resolution": ("pow2", 4, MAX_RESOLUTION),
    "img_channels": ("int", 1, MAX_IMG_CHANNELS),
    "architecture": ("choice", {"resnet"}, None),
    "channel_base": ("int", 1, MAX_CHANNEL_BASE),
    "channel_max": ("int", 1, MAX_CHANNELS),
    "num_fp16_res": ("int", 0, MAX_FP16_RES),
    "conv_clamp": ("optfloat", 0.0, MAX_FLOAT),
    "cmap_dim": ("optint", 0, MAX_CHANNELS),
    "low_precision_dtype": ("choice", {"float16", "bfloat16"}, None),
    "channels_last": ("bool", None, None),
    "block_kwargs": ("optdict", D_BLOCK_RULES, None),
    "mapping_kwargs": ("optdict", D_MAPPING_RULES, None),
    "epilogue_kwargs": ("optdict", D_EPILOGUE_RULES, None),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_rule(what: str, name: str, value: Any, rule: Rule) -> None:
    kind, a, b = rule
    if kind.startswith("opt"):
        if value is None:
            return
        kind = kind[3:]
    bad = ""
    if kind in ("int", "pow2", "odd"):
        if not _is_int(value):
            bad = "an integer"
        elif not a <= value <= b or (kind == "pow2" and value & (value - 1)) or (kind == "odd" and not value % 2):
            noun = {"pow2": "a power of two", "odd": "an odd integer"}.get(kind, "an integer")
            bad = f"{noun} in [{a}, {b}]"
    elif kind == "float":
        if not _is_number(value) or not a <= value <= b:
            bad = f"a finite number in [{a:g}, {b:g}]"
    elif kind == "bool":
        if not isinstance(value, bool):
            bad = "true or false"
    elif kind == "choice":
        if not isinstance(value, str) or value not in a:
            bad = f"one of {sorted(a)}"
    elif kind == "oneof":
        if not any(type(value) is type(v) and value == v for v in a):
            bad = f"one of {', '.join(map(repr, a))}"
    elif kind == "floats":
        if not isinstance(value, (list, tuple)) or not a <= len(value) <= b or not all(map(_is_number, value)):
            bad = f"a list of {a} to {b} finite numbers"
    elif kind == "dict":
        if not isinstance(value, dict):
            bad = "a dict"
        else:
            check_arguments(f"{what}.{name}", value, a)
            return
    else:  # pragma: no cover - a typo in the rules above
        raise AssertionError(kind)
    if bad:
        raise NetworkFormatError(f"{what}: constructor argument {name} is {quoted(value)}, expected {bad}")


def check_arguments(what: str, kwargs: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Every argument known, of the right type and within its limits; raises NetworkFormatError."""
    unknown = sorted(quoted(k) for k in kwargs if k not in rules)
    if unknown:
        raise NetworkFormatError(f"{what}: unsupported constructor argument(s) {', '.join(unknown[:8])}")
    for name, value in kwargs.items():
        _check_rule(what, name, value, rules[name])


# --- what the arguments imply, by arithmetic ------------------------------------------------------
# The formulas mirror the constructors of mapping.py, synthesis.py, stylegan2*.py and discriminator.py;
# tests/model/test_model_limits.py checks them against built modules, so they cannot drift apart.


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    return {
        k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty
    }


def _fc(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def synthesis_geometry(w: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """Channels and sampling rates of the input and each synthesis layer ([num_layers + 1] each)."""
    n, res = w["num_layers"], w["img_resolution"]
    if not 0 <= w["num_critical"] < n:
        raise NetworkFormatError(f"num_critical {w['num_critical']} must be below num_layers {n}")
    # a degenerate progression is refused, never turned into NaN or infinite sizes
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        exponents = np.minimum(np.arange(n + 1) / (n - w["num_critical"]), 1)
        cutoffs = w["first_cutoff"] * (res / 2 / w["first_cutoff"]) ** exponents
        last_stopband = res / 2 * w["last_stopband_rel"]
        stopbands = w["first_stopband"] * (last_stopband / w["first_stopband"]) ** exponents
        rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
        channels = np.rint(np.minimum((w["channel_base"] / 2) / cutoffs, w["channel_max"]))
    channels[-1] = w["img_channels"]
    return [int(c) for c in channels], [float(r) for r in rates]


def generator_parameter_count(kwargs: Mapping[str, Any], what: str = "G") -> int:
    """Parameters (weights and biases) of Generator(**kwargs); refuses filters over MAX_FILTER_TAPS."""
    from .mapping import MappingNetwork
    from .synthesis import SynthesisNetwork

    w = {**_defaults(SynthesisNetwork.__init__), **kwargs}
    mapping = {**_defaults(MappingNetwork.__init__), **(kwargs.get("mapping_kwargs") or {})}
    try:
        channels, rates = synthesis_geometry(w)
    except FloatingPointError as e:
        raise NetworkFormatError(f"{what}: the synthesis layer geometry is degenerate ({e})") from e
    except NetworkFormatError as e:
        raise NetworkFormatError(f"{what}: {e}") from e
    n, w_dim, z_dim, c_dim = w["num_layers"], w["w_dim"], w["z_dim"], w["c_dim"]
    total = channels[0] * channels[0] + _fc(w_dim, 4)  # input: weight + affine
    for idx in range(n + 1):
        prev, torgb = max(idx - 1, 0), idx == n
        c_in, c_out = channels[prev], channels[idx]
        k = 1 if torgb else w["conv_kernel"]
        total += _fc(w_dim, c_in) + c_out * c_in * k * k + c_out  # affine, weight, bias
        tmp = max(rates[prev], rates[idx]) * (1 if torgb else w["lrelu_upsampling"])
        taps = 1 if torgb else w["filter_size"] * tmp / min(rates[prev], rates[idx])
        if taps > MAX_FILTER_TAPS:
            raise NetworkFormatError(
                f"{what}: synthesis layer {idx} would need a {taps:g}-tap filter (limit {MAX_FILTER_TAPS}); "
                "check filter_size, lrelu_upsampling and the cutoff/stopband arguments"
            )
    features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * mapping["num_layers"]
    total += _fc(c_dim, w_dim) if c_dim > 0 else 0
    total += sum(_fc(features[i], features[i + 1]) for i in range(mapping["num_layers"]))
    return total


def _mapping_parameter_count(z_dim: int, c_dim: int, w_dim: int, m: Mapping[str, Any]) -> int:
    """Parameters of MappingNetwork (mapping.py) with the arguments m (defaults filled in)."""
    embed = (w_dim if m.get("embed_features") is None else m["embed_features"]) if c_dim > 0 else 0
    layer = w_dim if m.get("layer_features") is None else m["layer_features"]
    features = [z_dim + embed] + [layer] * (m["num_layers"] - 1) + [w_dim]
    total = _fc(c_dim, embed) if c_dim > 0 else 0
    return total + sum(_fc(features[i], features[i + 1]) for i in range(m["num_layers"]))


def stylegan2_generator_sizes(kwargs: Mapping[str, Any]) -> tuple[int, int]:
    """(parameters, buffer elements) of StyleGAN2Generator(**kwargs); the buffers (noise, filters,
    w_avg) are tensors a file must carry too, so they count towards what it must hold."""
    from .mapping import MappingNetwork
    from .stylegan2 import MAPPING_LAYERS, StyleGAN2Synthesis, SynthesisBlock
    from .stylegan2_layers import SynthesisLayer

    d = {
        **_defaults(SynthesisLayer.__init__),
        **_defaults(SynthesisBlock.__init__),
        **_defaults(StyleGAN2Synthesis.__init__),
        **kwargs,
    }
    m = {**_defaults(MappingNetwork.__init__), "num_layers": MAPPING_LAYERS, **(kwargs.get("mapping_kwargs") or {})}
    res, w_dim, img_channels, k = d["img_resolution"], d["w_dim"], d["img_channels"], d["kernel_size"]
    taps = len(d["resample_filter"]) ** 2  # the block's and its upsampling conv0's filter
    conv1_taps = len(_defaults(SynthesisLayer.__init__)["resample_filter"]) ** 2  # conv1 keeps the default
    resolutions = [2**i for i in range(2, int(math.log2(res)) + 1)]
    ch = {r: min(d["channel_base"] // r, d["channel_max"]) for r in resolutions}
    noise = 1 if d["use_noise"] else 0
    params, buffers = 0, d["w_dim"]  # w_avg
    for r in resolutions:
        c_in, c_out = (ch[r // 2] if r > 4 else 0), ch[r]
        buffers += taps  # the block's resample_filter
        layers = [(c_out, c_out, conv1_taps)] if c_in == 0 else [(c_in, c_out, taps), (c_out, c_out, conv1_taps)]
        params += c_out * r * r if c_in == 0 else 0  # const
        for li, lo, layer_taps in layers:
            params += _fc(w_dim, li) + lo * li * k * k + lo + noise  # affine, weight, bias, noise_strength
            buffers += layer_taps + noise * r * r  # resample_filter, noise_const
        if r == res or d["architecture"] == "skip":
            params += _fc(w_dim, c_out) + img_channels * c_out + img_channels  # ToRGB: affine, weight, bias
        if c_in != 0 and d["architecture"] == "resnet":
            params += c_out * c_in  # the 1x1 skip (no bias)
            buffers += taps
    params += _mapping_parameter_count(d["z_dim"], d["c_dim"], w_dim, m)
    return params, buffers


def discriminator_parameter_count(kwargs: Mapping[str, Any]) -> int:
    """Parameters (weights and biases) of Discriminator(**kwargs)."""
    from .discriminator import Discriminator, DiscriminatorEpilogue
    from .mapping import ConditionMapping

    d = {**_defaults(Discriminator.__init__), **kwargs}
    res, c_dim, img_channels = d["img_resolution"], d["c_dim"], d["img_channels"]
    resolutions = [2**i for i in range(int(math.log2(res)), 2, -1)]
    ch = {r: min(d["channel_base"] // r, d["channel_max"]) for r in resolutions + [4]}
    total = 0
    for r in resolutions:
        tmp, out = ch[r], ch[r // 2]
        if r == res:
            total += _fc(img_channels, tmp)  # fromrgb (1x1)
        total += _fc(tmp * 9, tmp) + _fc(tmp * 9, out) + _fc(tmp, out, bias=False)  # conv0, conv1, skip
    cmap = 0 if c_dim == 0 else (ch[4] if d["cmap_dim"] is None else d["cmap_dim"])
    if c_dim > 0:
        m = {**_defaults(ConditionMapping.__init__), **(d["mapping_kwargs"] or {})}
        embed = cmap if m["embed_features"] is None else m["embed_features"]
        layer = cmap if m["layer_features"] is None else m["layer_features"]
        features = [embed] + [layer] * (m["num_layers"] - 1) + [cmap]
        total += _fc(c_dim, embed) + sum(_fc(features[i], features[i + 1]) for i in range(m["num_layers"]))
    e = {**_defaults(DiscriminatorEpilogue.__init__), **(d["epilogue_kwargs"] or {})}
    c4 = ch[4]
    total += _fc((c4 + e["mbstd_num_channels"]) * 9, c4) + _fc(c4 * 16, c4) + _fc(c4, 1 if cmap == 0 else cmap)
    return total
