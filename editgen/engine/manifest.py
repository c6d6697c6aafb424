"""The manifest of an exported engine directory: one type, `Manifest`, that `editgen export`
writes and the runtime reads.

Torch-free. The export builds a Manifest and writes it (`Manifest.write(dir)`, through
`to_json`); a backend opens a directory with `load_manifest(dir)` (through `from_json`),
where every check lives, each raising ExportDirError naming the file and what is wrong:

- the directory exists and has manifest.json, a JSON object;
- format_version is FORMAT_VERSION and editgen_version this editgen's version;
- every key below is present with its type (shapes through ModelShapes' own checks),
  dtype and quantize are known, every graph of GRAPHS is listed, tensor shapes are ints
  or axis names (parsed, never `eval`ed), file names stay inside the directory;
- every file it names exists: the tokenizer, each graph and its external data, and an
  int8 export's int8_step.npz, int8_codec.npz and codec graphs.

Tensor shapes use named dynamic axes (`"rows"`, `"positions"`, ...) that the runtime
resolves with `TensorSpec.resolve(axes)` to size its buffers.

Layout of manifest.json (format_version 7):

    {
      "format_version": 7, "editgen_version": "0.1.0", "model": "random:tiny", "is_random": true,
      "dtype": "fp32" | "fp16", "quantize": null | "int8", "opset": 17,
      "exporter": "torch ... (TorchScript, dynamo=False), onnx ..., onnxruntime ...",
      "shapes": {ModelShapes.to_dict()},
      "tokenizer": "tokenizer.json",
      "dynamic_axes": {"rows": "...what it means...", ...},
      "graphs": {
        "decoder_step": {
          "file": "decoder_step.onnx", "data_file": null | "decoder_step.onnx.data",
          "dtype": "fp32", "quantize": null | "int8",
          "inputs":  [{"name": "codes", "dtype": "int64", "shape": ["rows", 4]}, ...,
                      {"name": "past_key_0", "dtype": "float32", "shape": ["rows", 16, "positions", 64]},
                      ...],
          "outputs": [...],
          "validation": {"errors": {"logits": {"max_abs_error": 1e-7, ...}, ...}, "tolerance": 1e-4, ...}
                        | {"skipped": "why", "tolerance": ...}
        }, ...                                           # every graph of GRAPHS
      },
      "encodec": {"min_samples": 2560},
      "int8": {...},  # only with --quantize int8: the int8 ONNX step's agreement with fp32 (export.quantize)
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

A new key: a field of Manifest (with a default if older exports of the same format lack
it), its line in to_dict and in from_dict; bump FORMAT_VERSION when the runtime cannot
read the file without it.
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
          "bool": np.bool_}  # of tensors
EXPORT_DTYPES = ("fp32", "fp16")  # of an export's weights and compute (`editgen export --dtype`)
QUANTIZE = ("int8",)  # `editgen export --quantize`; None: not quantized
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
    validation: dict  # the export's check against torch (editgen.export.onnx_export.validate_graph)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, self.name)

    def to_dict(self) -> dict:
        """The entry under manifest["graphs"][name] (the name is its key there)."""
        return {
            "file": self.file, "data_file": self.data_file, "dtype": self.dtype, "quantize": self.quantize,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "validation": self.validation,
        }

    @classmethod
    def from_dict(cls, name: str, raw: dict, where: str) -> "GraphInfo":
        where = f"{where} graph {name}"
        try:
            return cls(
                name=name, file=_plain_file_name(raw["file"], where),
                dtype=_one_of(raw["dtype"], EXPORT_DTYPES, "dtype", where),
                data_file=_plain_file_name(raw["data_file"], where) if raw.get("data_file") else None,
                quantize=_one_of(raw["quantize"], (None, *QUANTIZE), "quantize", where),
                inputs=tuple(TensorSpec.from_dict(t, where) for t in raw["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t, where) for t in raw["outputs"]),
                validation=_typed(raw["validation"], dict, "validation", where),
            )
        except (KeyError, TypeError) as exc:
            raise ExportDirError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None


def _by_name(specs, name, graph):
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(f"graph {graph} has no tensor {name!r}")


@dataclasses.dataclass(frozen=True)
class Manifest:
    model: str  # what was exported: a checkpoint directory, hub id or random:<preset>
    is_random: bool  # random weights (the CLI says so)
    dtype: str  # fp32 | fp16: the decoder graphs' weights and compute
    quantize: str | None  # None | int8
    opset: int
    exporter: str  # the torch, onnx and onnxruntime versions that wrote it
    shapes: ModelShapes
    tokenizer: str  # file name in the directory
    dynamic_axes: dict[str, str]  # axis name -> what it means (editgen.engine.contract.DYNAMIC_AXES)
    graphs: dict[str, GraphInfo]  # every graph of GRAPHS
    encodec_min_samples: int  # shortest audio the exported encoder takes
    int8: dict | None = None  # --quantize int8 only: the int8 ONNX step's agreement with fp32
    int8_step: dict | None = None  # --quantize int8 only: the CPU int8 step (editgen.export.int8_step)
    int8_codec: dict | None = None  # --quantize int8 only: EnCodec with an int8 LSTM (editgen.export.int8_codec)
    format_version: int = FORMAT_VERSION
    editgen_version: str = __version__
    root: Path | None = dataclasses.field(default=None, compare=False)  # where it was read from; not in the file

    @property
    def tokenizer_file(self) -> Path:
        return self.root / self.tokenizer

    def graph_path(self, name: str) -> Path:
        return self.root / self.graphs[name].file

    @property
    def int8_codec_graphs(self) -> tuple[GraphInfo, ...]:
        """The int8 codec's head and tail graphs, or () when the export has none."""
        return _codec_graphs(self.int8_codec, "manifest")

    def files(self) -> list[str]:
        """Every file of the directory the manifest names."""
        graphs = (*self.graphs.values(), *self.int8_codec_graphs)
        npz = [entry["file"] for entry in (self.int8_step, self.int8_codec) if entry is not None]
        return [self.tokenizer] + [f for g in graphs for f in (g.file, g.data_file) if f] + npz

    def to_dict(self) -> dict:
        data = {
            "format_version": self.format_version, "editgen_version": self.editgen_version, "model": self.model,
            "is_random": self.is_random, "dtype": self.dtype, "quantize": self.quantize, "opset": self.opset,
            "exporter": self.exporter, "shapes": self.shapes.to_dict(), "tokenizer": self.tokenizer,
            "dynamic_axes": dict(self.dynamic_axes), "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
            "encodec": {"min_samples": self.encodec_min_samples},
        }
        for key in ("int8", "int8_step", "int8_codec"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, directory: str | Path) -> None:
        (Path(directory) / MANIFEST_FILE).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        """Parse and check a manifest (the module docstring); `where` names it in errors."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExportDirError(f"{where} cannot be read: {exc}") from None
        return cls.from_dict(data, where)

    @classmethod
    def from_dict(cls, data, where: str) -> "Manifest":
        if not isinstance(data, dict):
            raise ExportDirError(f"{where} is not a JSON object")
        fmt = data.get("format_version")
        if fmt != FORMAT_VERSION:
            raise ExportDirError(f"{where} has format_version {fmt!r}, this editgen reads {FORMAT_VERSION}: "
                                 "re-export the model with this version of `editgen export`")
        version = data.get("editgen_version")
        if version != __version__:
            raise ExportDirError(f"{where} was written by editgen {version!r}, this is editgen {__version__}: "
                                 "re-export the model with this version of `editgen export`")
        try:
            shapes = ModelShapes.from_dict(data["shapes"])
            raw_graphs = _typed(data["graphs"], dict, "graphs", where)
            missing = [name for name in GRAPHS if name not in raw_graphs]
            if missing:
                raise ExportDirError(f"{where} lists no graph {missing[0]!r}: re-export the model")
            manifest = cls(
                model=_typed(data["model"], str, "model", where),
                is_random=_typed(data["is_random"], bool, "is_random", where),
                dtype=_one_of(data["dtype"], EXPORT_DTYPES, "dtype", where),
                quantize=_one_of(data["quantize"], (None, *QUANTIZE), "quantize", where),
                opset=_typed(data["opset"], int, "opset", where),
                exporter=_typed(data["exporter"], str, "exporter", where),
                shapes=shapes,
                tokenizer=_plain_file_name(data["tokenizer"], where),
                dynamic_axes=_typed(data["dynamic_axes"], dict, "dynamic_axes", where),
                graphs={name: GraphInfo.from_dict(name, raw_graphs[name], where) for name in GRAPHS},
                encodec_min_samples=_typed(data["encodec"]["min_samples"], int, "encodec min_samples", where),
                int8=_optional_dict(data, "int8", where),
                int8_step=_optional_dict(data, "int8_step", where),
                int8_codec=_optional_dict(data, "int8_codec", where),
            )
            for key in ("int8_step", "int8_codec"):
                if getattr(manifest, key) is not None:
                    _plain_file_name(getattr(manifest, key).get("file"), f"{where} {key}")
            _codec_graphs(manifest.int8_codec, where)
            return manifest
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportDirError(f"{where} is incomplete or malformed ({type(exc).__name__}: {exc})") from None


def load_manifest(root: str | Path) -> Manifest:
    """Read and check `root/manifest.json` and the files it names; ExportDirError naming what is wrong."""
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
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportDirError(f"{path} cannot be read: {exc}") from None
    manifest = dataclasses.replace(Manifest.from_json(text, str(path)), root=root)
    for name in manifest.files():
        if not (root / name).is_file():
            raise ExportDirError(f"engine directory {root} is missing {name}: "
                                 "the export is incomplete, run `editgen export` again")
    return manifest


_JSON_TYPES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


def _typed(value, kind: type, key: str, where: str):
    """`value` if it is a `kind` (a bool is no integer here), else ExportDirError."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ExportDirError(f"{where}: {key} must be {_JSON_TYPES[kind]}, got {value!r}")
    return value


def _one_of(value, allowed: tuple, key: str, where: str):
    if value not in allowed:
        raise ExportDirError(f"{where}: {key} {json.dumps(value)} is not one of {', '.join(map(json.dumps, allowed))}")
    return value


def _plain_file_name(value, where: str) -> str:
    """Files of an export live in its directory: reject paths that leave it."""
    if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
        raise ExportDirError(f"{where}: bad file name {value!r}")
    return value


def _optional_dict(data: dict, key: str, where: str) -> dict | None:
    return None if data.get(key) is None else _typed(data[key], dict, key, where)


def _codec_graphs(entry: dict | None, where: str) -> tuple[GraphInfo, ...]:
    where = f"{where} int8_codec"
    try:
        return tuple(GraphInfo.from_dict(graph["name"], graph, where) for graph in (entry or {}).get("graphs", ()))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ExportDirError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
