"""The manifest of an exported engine directory (`editgen export`): reading and checking.

Torch-free: the ORT backend opens a directory with `load_manifest(dir)`, which checks the
format and editgen versions and that every file the manifest names is present, raising
ExportDirError naming the file. Tensor shapes use named dynamic axes (`"rows"`,
`"positions"`, ...) that the runtime resolves with `TensorSpec.resolve(axes)` to size its
buffers: plain dictionary lookups, never `eval`.

Layout of manifest.json (format_version 7):

    {
      "format_version": 7, "editgen_version": "0.1.0", "model": "random:tiny",
      "dtype": "fp32" | "fp16", "quantize": null | "int8", "opset": 17,
      "shapes": {ModelShapes.to_dict()},
      "tokenizer": "tokenizer.json",
      "dynamic_axes": {"rows": "...what it means...", ...},
      "graphs": {
        "decoder_step": {
          "file": "decoder_step.onnx", "data_file": null | "decoder_step.onnx.data",
          "dtype": "fp32", "quantize": null,
          "inputs":  [{"name": "codes", "dtype": "int64", "shape": ["rows", 4]}, ...,
                      {"name": "past_key_0", "dtype": "float32", "shape": ["rows", 16, "positions", 64]},
                      ...],
          "outputs": [...],
          "validation": {"max_abs_error": {"logits": 1e-7, ...}, "tolerance": 1e-3}
        }, ...
      },
      "encodec": {"min_samples": 2560},
      "int8": {...},  # only with --quantize int8: agreement with fp32
      "int8_step": {  # only with --quantize int8: the CPU int8 step (editgen.export.int8_step)
        "file": "int8_step.npz", "weights": "...", "isa": "avx2",
        "agreement": {...}, "step_ms": {"int8-step": 12.3, "ort-int8": 45.6}, "default": "int8-step",
        "timed": {"rows": 4, "position": 250, "steps": 10}
      } | {"file": ..., "weights": ..., "skipped": "why"},
      "int8_codec": {  # only with --quantize int8: EnCodec decode with an int8 LSTM (export.int8_codec)
        "file": "int8_codec.npz", "weights": "...",
        "graphs": [{"name": "encodec_decode_head", "file": ..., ...}, {"name": "encodec_decode_tail", ...}],
        "agreement": {"snr_db": 60.1, "max_abs_error": ..., ...} | {"skipped": "why"}
      }
    }
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.errors import ExportDirError
from editgen.version import __version__

# 2: decoder_step takes one K/V input per layer (past_key_0, ...) instead of kv_cache/cross_k/cross_v.
# 3: per-row `positions` [rows] instead of one `position`; the K/V axis is named "positions".
# 4: EnCodec graphs carry an audio channel axis (stereo checkpoints): encodec_decode gives
#    audio [clips, channels, samples], encodec_encode takes wav [channels, samples];
#    shapes has audio_channels.
# 5: self-attention injection: decoder_step takes edit_self_blend [rows, layers] and
#    edit_self_window [rows].
# 6: an int8 export also holds the segmented step of the int8 KV engine ("segments").
# 7: an int8 export holds the CPU int8 step's weights and measurements ("int8_step")
#    instead of the segments, and EnCodec's decoder cut around its LSTM ("int8_codec").
FORMAT_VERSION = 7
MANIFEST_FILE = "manifest.json"
GRAPHS = ("text_encoder", "cross_kv", "decoder_step", "encodec_decode", "encodec_encode")
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
          "bool": np.bool_}
_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype ("float32", "int64", ...) and shape, whose
    entries are ints (static) or axis names (dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.dtype])

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def resolve(self, axes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape given the sizes of the named axes, e.g. {"rows": 4}."""
        missing = [d for d in self.axes if d not in axes]
        if missing:
            raise KeyError(f"{self.name}: no size given for axes {missing}")
        return tuple(axes[d] if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "TensorSpec":
        try:
            name, dtype, shape = data["name"], data["dtype"], data["shape"]
        except (KeyError, TypeError):
            raise ExportDirError(f"{where}: a tensor entry lacks name/dtype/shape") from None
        if dtype not in DTYPES:
            raise ExportDirError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
        dims = []
        for d in shape:
            if isinstance(d, bool) or not (isinstance(d, int) and d >= 0
                                           or isinstance(d, str) and _AXIS.match(d)):
                raise ExportDirError(f"{where}: tensor {name!r} has a bad dimension {d!r}")
            dims.append(d)
        return cls(str(name), dtype, tuple(dims))


@dataclasses.dataclass(frozen=True)
class GraphInfo:
    name: str
    file: str
    data_file: str | None  # ONNX external data (graphs over 2 GB), beside `file`
    dtype: str  # compute dtype: fp32 | fp16 (inputs/outputs keep the dtypes of `inputs`)
    quantize: str | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    validation: dict

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)

    def to_dict(self) -> dict:
        return {
            "file": self.file, "data_file": self.data_file, "dtype": self.dtype, "quantize": self.quantize,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "validation": self.validation,
        }


def _by_name(specs, name, graph):
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"graph {graph} has no tensor {name!r}")


@dataclasses.dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict  # the parsed manifest.json, as written
    shapes: ModelShapes
    graphs: dict[str, GraphInfo]
    tokenizer_file: Path

    @property
    def dtype(self) -> str:
        return self.data.get("dtype", "fp32")

    @property
    def quantize(self) -> str | None:
        return self.data.get("quantize")

    def graph_path(self, name: str) -> Path:
        return self.root / self.graphs[name].file

    @property
    def int8_step(self) -> dict | None:
        """manifest["int8_step"] of an int8 export (editgen.export.int8_step), or None."""
        entry = self.data.get("int8_step")
        if entry is not None and not isinstance(entry, dict):
            raise ExportDirError(f"{self.root / MANIFEST_FILE} int8_step is malformed")
        return entry

    @property
    def int8_codec(self) -> dict | None:
        """manifest["int8_codec"] of an int8 export (editgen.export.int8_codec), or None."""
        entry = self.data.get("int8_codec")
        if entry is not None and not isinstance(entry, dict):
            raise ExportDirError(f"{self.root / MANIFEST_FILE} int8_codec is malformed")
        return entry

    @property
    def int8_codec_graphs(self) -> tuple[GraphInfo, ...]:
        """The int8 codec's head and tail graphs, or () when the export has none."""
        where = self.root / MANIFEST_FILE
        try:
            return tuple(_graph(entry["name"], entry, where) for entry in (self.int8_codec or {}).get("graphs", ()))
        except (KeyError, TypeError) as exc:
            raise ExportDirError(f"{where} int8_codec is malformed ({type(exc).__name__}: {exc})") from None

    @property
    def encodec_min_samples(self) -> int:
        return int(self.data.get("encodec", {}).get("min_samples", 0))


def load_manifest(root: str | Path) -> Manifest:
    """Read and check `root/manifest.json`; ExportDirError naming what is wrong."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ExportDirError(f"--engine {root} is a file, not an engine directory: give the directory "
                             "written by `editgen export` (a checkpoint goes to --model)")
    if not root.is_dir():
        raise ExportDirError(f"engine directory {root} does not exist: run `editgen export` first")
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ExportDirError(f"engine directory {root} has no {MANIFEST_FILE}: "
                             "is it a directory written by `editgen export`?")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportDirError(f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ExportDirError(f"{path} is not a JSON object")
    fmt = data.get("format_version")
    if fmt != FORMAT_VERSION:
        raise ExportDirError(f"{path} has format_version {fmt!r}, this editgen reads {FORMAT_VERSION}: "
                             "re-export the model with this version of `editgen export`")
    version = data.get("editgen_version")
    if version != __version__:
        raise ExportDirError(f"{path} was written by editgen {version!r}, this is editgen {__version__}: "
                             "re-export the model with this version of `editgen export`")
    try:
        shapes = ModelShapes.from_dict(data["shapes"])
        raw_graphs = data["graphs"]
        tokenizer = data["tokenizer"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportDirError(f"{path} is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    graphs = {}
    for name in GRAPHS:
        if name not in raw_graphs:
            raise ExportDirError(f"{path} lists no graph {name!r}: re-export the model")
        graphs[name] = _graph(name, raw_graphs[name], path)
    manifest = Manifest(root, data, shapes, graphs, root / _plain_file_name(tokenizer, str(path)))
    _check_files(manifest)
    return manifest


def _graph(name: str, raw: dict, path: Path) -> GraphInfo:
    where = f"{path} graph {name}"
    try:
        return GraphInfo(
            name=name, file=_plain_file_name(raw["file"], where), dtype=raw.get("dtype", "fp32"),
            data_file=_plain_file_name(raw["data_file"], where) if raw.get("data_file") else None,
            quantize=raw.get("quantize"),
            inputs=tuple(TensorSpec.from_dict(t, where) for t in raw["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t, where) for t in raw["outputs"]),
            validation=dict(raw.get("validation") or {}),
        )
    except (KeyError, TypeError) as exc:
        raise ExportDirError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None


def _plain_file_name(value, where: str) -> str:
    """Files of an export live in its directory: reject paths that leave it."""
    if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
        raise ExportDirError(f"{where}: bad file name {value!r}")
    return value


def _check_files(manifest: Manifest) -> None:
    needed = [manifest.tokenizer_file.name]
    for graph in manifest.graphs.values():
        needed.append(graph.file)
        if graph.data_file:
            needed.append(graph.data_file)
    if manifest.int8_step is not None:
        needed.append(_plain_file_name(manifest.int8_step.get("file"), f"{manifest.root / MANIFEST_FILE} int8_step"))
    if manifest.int8_codec is not None:
        needed.append(_plain_file_name(manifest.int8_codec.get("file"), f"{manifest.root / MANIFEST_FILE} int8_codec"))
        needed += [graph.file for graph in manifest.int8_codec_graphs]
    for name in needed:
        if not (manifest.root / name).is_file():
            raise ExportDirError(f"engine directory {manifest.root} is missing {name}: "
                                 "the export is incomplete, run `editgen export` again")
