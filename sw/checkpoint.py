"""Save a model passed through :func:`~sparsemac.sw.model_offload.offload`, and load it back.

An offloaded linear keeps its pruned weight as int8 CSR, which is not a tensor of the model's
``state_dict``: transformers' ``save_pretrained`` would write the model without it, and
``from_pretrained`` would fill those linears with random weights. :func:`save_offloaded`
writes everything instead, as safetensors and JSON only (nothing is ever pickled):

``config.json``
    The Hugging Face config of the model.
``sparsemac-offload.safetensors``
    The float tensors of everything not offloaded, under their ``state_dict`` names, and for
    each offloaded layer ``NAME``: ``NAME.indptr`` (int64), ``NAME.indices`` (int16: the wire
    format's columns fit), ``NAME.data`` (int8), ``NAME.weight_scale`` (float32, one per
    output row) and ``NAME.bias`` (float32, when the layer has one).
``sparsemac-offload.json``
    The manifest: format version, model class, the int8 range, the array config, per
    offloaded layer its name, shape, nonzeros, activation granularity and bias, and the
    feed-forward activation (:class:`~sparsemac.sw.ffn_activation.ActivationSetting`: its spec,
    the intermediates it replaces, a ReLU's thresholds; ``none`` when the key is absent).

There is deliberately no ``model.safetensors``: ``from_pretrained`` of the folder then fails
instead of loading a model with random linears. :func:`load_offloaded` rebuilds the model and
its offloaded linears on a device of your choice, bit-exact with the saved one. After
``offload``, the model's own ``save_pretrained`` calls :func:`save_offloaded`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from ..hw.config import ArrayConfig
from .activation_sparsity import agreed_activation
from .csr import CSRMatrix
from .device import Device
from .ffn_activation import ActivationSetting, model_activation, sparsify_activations
from .models import (OFFLOAD_MANIFEST_FILE, _preview, read_json, read_safetensors,
                     write_safetensors)
from .offloaded_linear import OffloadedLinear
from .pruning import conv1d_class
from .quantisation import QMAX
from ..hw.errors import InputError, MissingFileError

__all__ = ["FORMAT", "MANIFEST_FILE", "TENSORS_FILE", "SavedLayer", "OffloadManifest",
           "OffloadedCheckpoint", "save_offloaded", "load_offloaded", "bind_save_pretrained"]

#: Version of the layout below; a loader refuses any other.
FORMAT = "sparsemac-offload/1"
MANIFEST_FILE = OFFLOAD_MANIFEST_FILE
TENSORS_FILE = "sparsemac-offload.safetensors"
_CONFIG_FILE = "config.json"
_CSR_TENSORS = ("indptr", "indices", "data", "weight_scale")


@dataclass(frozen=True)
class SavedLayer:
    """One offloaded linear of a checkpoint."""

    #: Qualified module name, as in :class:`~sparsemac.sw.pruning.LayerWeights`.
    name: str
    #: ``(out_features, in_features)``.
    shape: tuple[int, int]
    #: Stored weights.
    nnz: int
    #: Activation quantisation scale, as in :class:`~sparsemac.sw.offloaded_linear.OffloadedLinear`.
    #: ``"tensor"`` or ``"token"``.
    granularity: str
    #: The layer has a float bias.
    bias: bool


@dataclass(frozen=True)
class OffloadManifest:
    """What ``sparsemac-offload.json`` records."""

    #: :data:`FORMAT`.
    format: str
    #: The transformers class of the model, e.g. ``BertModel``.
    model_class: str
    #: The int8 range of the weights, ``[-qmax, qmax]``, symmetric, one scale per row.
    qmax: int
    #: The array the model was offloaded to.
    config: ArrayConfig
    #: In module order.
    layers: list[SavedLayer]
    #: The feed-forward activation the model computes.
    activation: ActivationSetting = ActivationSetting(spec="none", layers=())


@dataclass
class OffloadedCheckpoint:
    """A loaded checkpoint."""

    #: In eval mode, its offloaded linears on the device given to :func:`load_offloaded`.
    model: nn.Module
    #: What the checkpoint says of itself; ``manifest.config`` is the array it was saved for (the
    #: sums do not depend on the array, the cycles do).
    manifest: OffloadManifest


def save_offloaded(model: nn.Module, path: str | os.PathLike) -> OffloadManifest:
    """Write an offloaded model to a folder, whole or not at all.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model passed through :func:`~sparsemac.sw.model_offload.offload` (any
        ``transformers`` model class, with its ``OffloadedLinear`` layers in place of
        ``nn.Linear`` or ``Conv1D`` layers), on the CPU.
    path : str or os.PathLike
        The folder. It must not exist, be empty, or hold an earlier checkpoint of this format,
        which is then replaced as a whole. Files are written to a temporary folder beside it,
        which is renamed into place only once everything is written.

    Returns
    -------
    OffloadManifest
        What was written.

    Raises
    ------
    ValueError
        If the model holds no OffloadedLinear, its class is not one of transformers' (the
        loader rebuilds it by name), its offloaded layers are on arrays of different
        configs, or its state could not be restored into a new model of its class (a
        reparametrised weight such as ``torch.nn.utils.prune``'s ``weight_orig``, a module
        added by hand, an OffloadedLinear where the class has no linear of its shape): the
        message names the tensors. Nothing is written then.
    FileExistsError
        If `path` is a file, or a folder holding something else than an offload checkpoint.
    """
    path = Path(path)
    _check_target(path)
    layers = _offloaded_layers(model)
    model_class = _transformers_class(type(model).__name__, "the model's class")
    configs = {module.device.config for _, module in layers}
    if len(configs) != 1:
        raise InputError(f"the offloaded layers are on arrays of {len(configs)} different "
                         f"configs ({', '.join(sorted(c.describe() for c in configs))}): "
                         "a checkpoint records one")
    manifest = OffloadManifest(
        format=FORMAT, model_class=model_class.__name__, qmax=QMAX, config=configs.pop(),
        layers=[SavedLayer(name=name, shape=module.weights.shape, nnz=module.weights.nnz,
                           granularity=module.granularity, bias=module.bias is not None)
                for name, module in layers],
        activation=model_activation(model))
    dense = _dense_state(model, manifest.layers)
    with torch.device("meta"):  # the class's tensors without their cost
        skeleton = model_class(model.config)
    _check_restorable(skeleton, manifest, dense, f"{path}: cannot save")
    tensors = {key: value.detach().cpu().clone() for key, value in dense.items()}
    for name, module in layers:
        tensors.update(_layer_tensors(name, module))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the final rename stays on one file system.
    partial = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
    partial.mkdir()
    try:
        model.config.to_json_file(partial / _CONFIG_FILE)
        write_safetensors(tensors, partial / TENSORS_FILE, metadata={"format": FORMAT})
        # safetensors creates its file readable by its owner only; the others follow the umask.
        (partial / TENSORS_FILE).chmod((partial / _CONFIG_FILE).stat().st_mode)
        (partial / MANIFEST_FILE).write_text(json.dumps(_manifest_json(manifest), indent=1))
        _replace(path, partial)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return manifest


def load_offloaded(path: str | os.PathLike, device: Device,
                   activation=None) -> OffloadedCheckpoint:
    """Load a folder written by :func:`save_offloaded`, its linears offloaded to `device`.

    Parameters
    ----------
    path : str or os.PathLike
    device : Device
        Runs every offloaded linear (in column tiles if its buffer is narrower). On a device of
        the saved config the cycles are those of the saved model too; the int32 sums, and so
        the outputs, are bit-exact with the saved model's on any device.
    activation : ActivationSpec or str, optional
        The feed-forward activation the caller expects; None takes the checkpoint's, which the
        model always computes.

    Returns
    -------
    OffloadedCheckpoint
        Its model's ``save_pretrained`` writes this format again.

    Raises
    ------
    FileNotFoundError
        If `path` or one of its three files is missing.
    ValueError
        If a file is damaged or not of this format, the manifest and the tensors disagree
        (missing, unexpected or misshapen tensors, a CSR array that breaks the format), or a
        layer does not fit `device`; the message names the file.
    ActivationMismatchError
        If `activation` is not the checkpoint's (a ValueError); nothing is loaded then.
    TypeError
        If `device` is not a Device.
    """
    path = Path(path)
    if not isinstance(device, Device):
        raise TypeError(f"device must be a Device (see open_device), not {device!r}")
    for file in (MANIFEST_FILE, _CONFIG_FILE, TENSORS_FILE):
        if not (path / file).is_file():
            hint = (": a plain Hugging Face checkpoint, load it with load_model or "
                    "from_pretrained" if (path / "model.safetensors").is_file() else "")
            raise MissingFileError(f"{path}: no {file}, so not a sparsemac offload "
                                    f"checkpoint{hint}")
    manifest = _manifest_from_json(read_json(path / MANIFEST_FILE), path / MANIFEST_FILE)
    agreed_activation(manifest.activation.spec, activation, f"checkpoint {path}")
    model_class = _transformers_class(manifest.model_class, f"{path / MANIFEST_FILE}: class")
    try:
        config = model_class.config_class.from_json_file(path / _CONFIG_FILE)
    except (OSError, ValueError) as error:
        raise InputError(f"{path / _CONFIG_FILE}: not a {model_class.__name__} config "
                         f"({error})") from error
    tensors = read_safetensors(path / TENSORS_FILE)
    where = str(path / TENSORS_FILE)
    layer_keys = {f"{layer.name}.{part}" for layer in manifest.layers
                  for part in _CSR_TENSORS + (("bias",) if layer.bias else ())}
    absent = sorted(layer_keys - set(tensors))
    if absent:
        raise InputError(f"{where}: no tensor {_preview(absent)} of the manifest's layers")
    dense = {key: value for key, value in tensors.items() if key not in layer_keys}
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: keep the seed
        model = model_class(config).eval()
    _check_restorable(model, manifest, dense, where)
    modules = [(layer.name, _layer_module(layer, tensors, device, where))
               for layer in manifest.layers]
    model.load_state_dict(dense, strict=False)  # the offloaded linears' keys are left out
    for name, module in modules:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
    saved = manifest.activation
    try:
        restored = sparsify_activations(model, saved.spec, thresholds=saved.thresholds)
    except ValueError as error:
        raise InputError(f"{path / MANIFEST_FILE}: activation: {error}") from error
    if restored != saved:
        raise InputError(f"{path / MANIFEST_FILE}: activation {saved.spec} of "
                         f"{list(saved.layers)}, but a {manifest.model_class} has its "
                         f"intermediates at {list(restored.layers)}")
    bind_save_pretrained(model)
    return OffloadedCheckpoint(model=model, manifest=manifest)


def bind_save_pretrained(model: nn.Module) -> None:
    """Make ``model.save_pretrained(path)`` call :func:`save_offloaded` (for this object only).

    Transformers' own would save the model without its offloaded weights. Options of
    transformers' method other than ``safe_serialization=True`` are refused with TypeError,
    not ignored. A deep copy of the model saves itself, not the original.
    """
    model.save_pretrained = types.MethodType(_save_pretrained, model)


# Internals --------------------------------------------------------------------------------------

def _save_pretrained(model, save_directory, **options):
    """save_pretrained of an offloaded model: :func:`save_offloaded`."""
    unsupported = sorted(key for key, value in options.items()
                         if (key, value) != ("safe_serialization", True))
    if unsupported:
        raise TypeError(f"an offloaded model's save_pretrained writes sparsemac's offload "
                        f"format (save_offloaded) and takes no {', '.join(unsupported)}")
    return save_offloaded(model, save_directory)


def _offloaded_layers(model):
    layers = [(name, module) for name, module in model.named_modules()
              if isinstance(module, OffloadedLinear)]
    if not layers:
        raise InputError(f"this {type(model).__name__} has no OffloadedLinear: save it with "
                         "transformers' save_pretrained")
    return layers


def _transformers_class(name, what):
    found = getattr(transformers, name, None) if name.isidentifier() else None
    if not (isinstance(found, type) and issubclass(found, transformers.PreTrainedModel)):
        raise InputError(f"{what} {name!r} is not a transformers model class: a checkpoint "
                         "rebuilds the model from its class name and config.json")
    return found


def _dense_state(model, layers):
    """The model's state, less every tensor under an offloaded layer."""
    prefixes = tuple(f"{layer.name}." for layer in layers)
    return {key: value for key, value in model.state_dict().items()
            if not key.startswith(prefixes)}


def _check_restorable(model, manifest, dense, where):
    """Refuse unless `dense` and the manifest's layers fill a model of the class exactly."""
    conv1d = conv1d_class()
    for layer in manifest.layers:
        try:
            module = model.get_submodule(layer.name)
        except AttributeError:
            module = None
        weight = getattr(module, "weight", None)
        shape = None if weight is None else tuple(weight.shape)
        if isinstance(module, nn.Linear):
            fits = shape == tuple(layer.shape)
        else:
            fits = conv1d is not None and isinstance(module, conv1d) and shape == tuple(
                reversed(layer.shape))
        if not fits or (module.bias is not None) != layer.bias:
            raise InputError(f"{where}: {layer.name} is offloaded as a {layer.shape[0]} x "
                             f"{layer.shape[1]} linear (bias {layer.bias}), but a "
                             f"{manifest.model_class} has {_describe(module)} there")
    expected = _dense_state(model, manifest.layers)
    missing = sorted(set(expected) - set(dense))
    unexpected = sorted(set(dense) - set(expected))
    misshapen = sorted(key for key in set(expected) & set(dense)
                       if tuple(expected[key].shape) != tuple(dense[key].shape))
    if missing or unexpected or misshapen:
        raise InputError(f"{where}: the tensors do not fill a {manifest.model_class} of this "
                         f"config: missing {_preview(missing)}, unexpected "
                         f"{_preview(unexpected)}, misshapen {_preview(misshapen)}")


def _describe(module):
    if module is None:
        return "no module"
    weight = getattr(module, "weight", None)
    shape = "" if weight is None else f" of weight {tuple(weight.shape)}"
    return f"a {type(module).__name__}{shape}"


def _layer_tensors(name, module):
    weights = module.weights
    tensors = {f"{name}.indptr": torch.from_numpy(weights.indptr.copy()),
               f"{name}.indices": torch.from_numpy(weights.indices.astype("int16")),
               f"{name}.data": torch.from_numpy(weights.data.copy()),
               f"{name}.weight_scale": module.weight_scale.detach().cpu().clone()}
    if module.bias is not None:
        tensors[f"{name}.bias"] = module.bias.detach().cpu().clone()
    return tensors


def _layer_module(layer, tensors, device, where):
    get = {part: tensors[f"{layer.name}.{part}"] for part in _CSR_TENSORS}
    dtypes = {"indptr": torch.int64, "indices": torch.int16, "data": torch.int8,
              "weight_scale": torch.float32}
    wrong = [f"{part} is {get[part].dtype}" for part, dtype in dtypes.items()
             if get[part].dtype != dtype]
    if wrong:
        raise InputError(f"{where}: {layer.name}: {', '.join(wrong)}; expected "
                         f"{', '.join(f'{part} {dtype}' for part, dtype in dtypes.items())}")
    try:
        weights = CSRMatrix(indptr=get["indptr"], indices=get["indices"], data=get["data"],
                            shape=tuple(layer.shape))
        if weights.nnz != layer.nnz:
            raise InputError(f"{weights.nnz} stored weights, the manifest says {layer.nnz}")
        bias = tensors[f"{layer.name}.bias"] if layer.bias else None
        return OffloadedLinear(weights, get["weight_scale"], bias, device, layer.granularity)
    except ValueError as error:
        raise InputError(f"{where}: {layer.name}: {error}") from error


def _check_target(path):
    if path.is_file() or (path.is_dir() and any(path.iterdir())
                          and not (path / MANIFEST_FILE).is_file()):
        raise FileExistsError(f"{path} exists and is not an offload checkpoint: save to a new "
                              "or empty folder")


def _replace(path, partial):
    """Rename the finished folder `partial` to `path`, replacing an earlier checkpoint there."""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    if not path.exists():
        partial.rename(path)
        return
    # Swap with renames, so `path` is at every moment the old checkpoint or the new one.
    old = partial.with_suffix(".old")
    path.rename(old)
    partial.rename(path)
    shutil.rmtree(old)


def _manifest_json(manifest):
    content = asdict(manifest)
    content["layers"] = [{**layer, "shape": list(layer["shape"])} for layer in content["layers"]]
    activation = content["activation"]
    activation["layers"] = list(activation["layers"])
    if activation["thresholds"] is not None:
        activation["thresholds"] = list(activation["thresholds"])
    return content


def _manifest_from_json(content, file):
    try:
        if content.get("format") != FORMAT:
            raise InputError(f"format {content.get('format')!r}, expected {FORMAT!r}")
        if content["qmax"] != QMAX:
            raise InputError(f"int8 range qmax={content['qmax']!r}, this version uses {QMAX}")
        layers = [SavedLayer(name=layer["name"], shape=tuple(layer["shape"]), nnz=layer["nnz"],
                             granularity=layer["granularity"], bias=layer["bias"])
                  for layer in content["layers"]]
        activation = content.get("activation", {"spec": "none", "layers": []})
        thresholds = activation.get("thresholds")
        setting = ActivationSetting(
            spec=activation["spec"], layers=tuple(activation["layers"]),
            thresholds=None if thresholds is None else tuple(map(float, thresholds)))
        return OffloadManifest(format=FORMAT, model_class=content["model_class"], qmax=QMAX,
                               config=ArrayConfig(**content["config"]), layers=layers,
                               activation=setting)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{file}: not a sparsemac offload manifest: {error}") from error
