"""SAE files written by other libraries: SAELens 6.x directories and Gemma Scope's ``params.npz``, read into and
written from the toolkit's :class:`~mi_toolkit.models.sae.SAE` fields and tensors (``SAE.save`` and ``load_sae`` call
these; use those).

Conventions, all three formats: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec
[d_in]``, ``pre = (x - b_dec?) @ W_enc + b_enc``, ``x_hat = f @ W_dec + b_dec``.

- SAELens (``cfg.json`` + ``sae_weights.safetensors``): ``architecture`` is ``"standard"`` (ReLU), ``"topk"`` (with
  ``k``; ReLU of the top k) or ``"jumprelu"`` (``ReLU(pre) * (pre > threshold)``, tensor ``threshold``);
  ``apply_b_dec_to_input`` says whether ``b_dec`` is subtracted before encoding. ``normalize_activations`` must be
  ``"none"`` or ``"expected_average_only_in"`` (which SAELens's own ``encode`` does not apply either: the scale is
  folded into the weights before saving); TopK's ``rescale_acts_by_decoder_norm`` is folded into the weights.
- Gemma Scope (``params.npz``, no config): JumpReLU, ``f = pre * (pre > threshold)`` with ``pre = x @ W_enc +
  b_enc``, i.e. ``apply_b_dec_to_input = False``. Read with ``allow_pickle=False``: nothing is unpickled.

A negative threshold gates nothing under SAELens's ``ReLU(pre) * (pre > t)`` beyond ``t = 0``, so it is read as 0;
under Gemma Scope's ``pre * (pre > t)`` it would pass negative activations, which the toolkit's positive threshold
cannot represent, so such a file is refused.
"""

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mi_toolkit.core.io import CheckpointError, load_json, load_tensors, save_json, save_tensors

__all__ = ["detect_format", "read_gemma_scope", "read_saelens", "write_gemma_scope", "write_saelens"]

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
SAELENS_FORMAT_VERSION = "6.0.0"
"""Written as ``metadata.sae_lens_version``: SAELens reads configs marked older than 6.0 with its pre-6.0 rules."""
_ARCHITECTURES = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
_WEIGHTS = ("W_enc", "W_dec", "b_enc", "b_dec")


def detect_format(path: Path) -> str:
    """``"toolkit"``, ``"saelens"`` or ``"gemma_scope"``, from what ``path`` holds.

    Raises:
        CheckpointError: ``path`` does not exist, or holds none of the three formats.
    """
    if not path.exists():
        raise CheckpointError(f"SAE not found: {path}")
    expected = ("expected a toolkit SAE directory (config.json + sae.safetensors), a SAELens directory (cfg.json + "
                "sae_weights.safetensors) or Gemma Scope's params.npz")
    if path.is_file():
        if zipfile.is_zipfile(path):
            return "gemma_scope"
        raise CheckpointError(f"{path} is not an SAE file (not an .npz archive): {expected}")
    names = {p.name for p in path.iterdir()}
    if names & {SAELENS_CFG, SAELENS_WEIGHTS}:
        return "saelens"
    if names & {"config.json", "sae.safetensors"}:
        return "toolkit"
    if GEMMA_SCOPE_FILE in names:
        return "gemma_scope"
    raise CheckpointError(f"{path} holds no SAE ({sorted(names)[:8]}): {expected}")


def _check_keys(path: Path, tensors: dict, required: set[str]) -> None:
    missing, extra = sorted(required - set(tensors)), sorted(set(tensors) - required)
    if missing or extra:
        raise CheckpointError(f"{path} lacks {missing}" if missing else f"{path} holds unexpected arrays {extra}")


def read_saelens(directory: Path) -> tuple[dict, dict[str, Tensor], Path, Path]:
    """Read a SAELens 6.x directory into ``(SAEConfig fields, tensors, cfg path, weights path)``.

    Raises:
        CheckpointError: a file is missing or corrupt, a key is missing, or the config uses something the toolkit's
            SAE cannot reproduce (another architecture, run-time normalisation).
    """
    cfg_path, weights_path = directory / SAELENS_CFG, directory / SAELENS_WEIGHTS
    cfg = load_json(cfg_path)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} is not a SAELens config (a JSON object)")
    architecture = cfg.get("architecture") or ("topk" if cfg.get("activation_fn") == "topk" else "standard")
    activation = {v: k for k, v in _ARCHITECTURES.items()}.get(architecture)
    missing = [key for key in ("d_in", "d_sae") if key not in cfg]
    if activation is None or missing:
        raise CheckpointError(f"{cfg_path} lacks {missing}" if missing else
                              f"{cfg_path}: SAELens architecture {architecture!r} is not supported "
                              f"(standard, topk, jumprelu)")
    normalize = cfg.get("normalize_activations") or "none"
    reshape = cfg.get("reshape_activations") or "none"
    if normalize not in ("none", "expected_average_only_in") or reshape not in ("none", "hook_z"):
        raise CheckpointError(f"{cfg_path}: normalize_activations={normalize!r} / reshape_activations={reshape!r} "
                              "is not supported (the toolkit's SAE applies no run-time normalisation)")
    fields = dict(d_in=cfg["d_in"], d_sae=cfg["d_sae"], activation=activation,
                  apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)))
    if activation == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise CheckpointError(f"{cfg_path} lacks 'k' (a TopK SAE)")
        fields["k"] = k
    tensors, _ = load_tensors(weights_path)
    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.all(scaling == 1):
        raise CheckpointError(f"{weights_path} holds a scaling_factor other than 1, which is not supported")
    if "log_threshold" in tensors:  # SAELens checkpoints before its threshold parametrisation
        tensors["threshold"] = tensors.pop("log_threshold").double().exp()
    _check_keys(weights_path, tensors, set(_WEIGHTS) | ({"threshold"} if activation == "jumprelu" else set()))
    if activation == "jumprelu":
        tensors["threshold"] = tensors["threshold"].clamp_min(0)
    if cfg.get("rescale_acts_by_decoder_norm") and tensors["W_dec"].ndim == 2:
        # SAELens scales the pre-activations by the decoder norms and divides them out before decoding.
        norms = tensors["W_dec"].double().norm(dim=-1)
        if tensors["W_enc"].shape[-1:] == norms.shape and tensors["b_enc"].shape == norms.shape:
            tensors["W_enc"] = tensors["W_enc"].double() * norms
            tensors["b_enc"] = tensors["b_enc"].double() * norms
            tensors["W_dec"] = tensors["W_dec"].double() / norms[:, None]
    return fields, tensors, cfg_path, weights_path


def write_saelens(directory: Path, fields: dict, weights: dict[str, Tensor]) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` as SAELens 6.x's ``SAE.save_model`` does.

    Args:
        directory: created if missing.
        fields: the SAE's config fields (``dataclasses.asdict(sae.cfg)``).
        weights: ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec`` and, for JumpReLU, ``threshold``.

    Returns:
        The directory.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"d_in": fields["d_in"], "d_sae": fields["d_sae"], "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": fields["apply_b_dec_to_input"], "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                        "written_by": "mi_toolkit"},
           "architecture": _ARCHITECTURES[fields["activation"]]}
    if fields["activation"] == "topk":
        cfg.update(k=fields["k"], rescale_acts_by_decoder_norm=False)
    save_tensors(directory / SAELENS_WEIGHTS, {name: t.float() for name, t in weights.items()})
    save_json(directory / SAELENS_CFG, cfg)
    return directory


def read_gemma_scope(path: Path) -> tuple[dict, dict[str, Tensor], Path, Path]:
    """Read Gemma Scope's ``params.npz`` (``path`` or ``path / "params.npz"``) into ``(SAEConfig fields, tensors,
    file, file)``; ``d_in`` and ``d_sae`` come from ``W_enc``'s shape.

    Raises:
        CheckpointError: not an .npz archive, pickled or non-numeric arrays, a missing key, shapes that disagree
            with ``W_enc``, or a negative threshold.
    """
    file = path if path.is_file() else path / GEMMA_SCOPE_FILE
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with archive:
            arrays = {("W" + key[1:] if key.startswith("w_") else key): archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise CheckpointError(f"corrupt or unreadable Gemma Scope file {file}: {error}") from error
    _check_keys(file, arrays, {*_WEIGHTS, "threshold"})
    not_numeric = [k for k, a in arrays.items() if a.dtype.kind not in "fiu"]
    if not_numeric:
        raise CheckpointError(f"{file}: arrays {not_numeric} are not numeric")
    if arrays["W_enc"].ndim != 2:
        raise CheckpointError(f"{file}: W_enc must be [d_in, d_sae], got shape {arrays['W_enc'].shape}")
    d_in, d_sae = arrays["W_enc"].shape
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
                "threshold": (d_sae,)}
    wrong = {k: tuple(arrays[k].shape) for k in expected if tuple(arrays[k].shape) != expected[k]}
    if wrong:
        raise CheckpointError(f"{file}: shapes disagree: W_enc is [d_in, d_sae] = {(d_in, d_sae)}, so the arrays "
                              f"must be {expected}, but got {wrong}")
    if (arrays["threshold"] < 0).any():
        raise CheckpointError(f"{file}: negative thresholds are not supported (the toolkit's JumpReLU threshold is "
                              "exp(log_threshold) > 0)")
    tensors = {k: torch.from_numpy(np.asarray(a, dtype=np.float64 if a.dtype == np.float64 else np.float32))
               for k, a in arrays.items()}
    return dict(d_in=d_in, d_sae=d_sae, activation="jumprelu", apply_b_dec_to_input=False), tensors, file, file


def write_gemma_scope(path: Path, fields: dict, weights: dict[str, Tensor]) -> Path:
    """Write Gemma Scope's ``params.npz``: at ``path`` if it ends in ``.npz``, else as ``path / "params.npz"``.

    A ReLU SAE is written as JumpReLU with threshold 0 (``pre * (pre > 0) = ReLU(pre)``); an SAE that subtracts
    ``b_dec`` before encoding has ``b_dec @ W_enc`` folded into ``b_enc`` (in float64), since Gemma Scope's encoder
    reads ``x @ W_enc + b_enc``.

    Raises:
        ValueError: a TopK SAE (Gemma Scope's format has no k).
    """
    if fields["activation"] == "topk":
        raise ValueError("a TopK SAE cannot be written as Gemma Scope's params.npz (JumpReLU only); use "
                         "format='saelens' or 'toolkit'")
    arrays = {name: t.detach().cpu().double() for name, t in weights.items()}
    if fields["apply_b_dec_to_input"]:
        arrays["b_enc"] = arrays["b_enc"] - arrays["b_dec"] @ arrays["W_enc"]
    arrays.setdefault("threshold", torch.zeros(fields["d_sae"], dtype=torch.float64))
    file = path if path.suffix == ".npz" else path / GEMMA_SCOPE_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp.npz")
    np.savez(tmp, **{name: a.numpy().astype(np.float32) for name, a in arrays.items()})
    os.replace(tmp, file)
    return file

