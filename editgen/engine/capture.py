"""Captured source maps on disk: one .npz with the source's cross-attention maps, its
codes and the settings they were made with, so many targets can be edited from it
without running the source again."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from editgen.engine.config import ModelShapes
from editgen.engine.options import GenerationOptions
from editgen.errors import InvalidRequestError, first_line

FORMAT_VERSION = 1
MAP_DTYPES = {"fp16": np.float16, "fp32": np.float32}  # precisions a capture stores its maps in


@dataclasses.dataclass
class SourceCapture:
    prompt: str
    codes: np.ndarray  # int64 [K, frames]
    maps: np.ndarray  # float16 or float32 [steps, layers, heads, T] conditional source maps
    options: GenerationOptions
    shapes: ModelShapes

    def save(self, path: str | Path) -> None:
        meta = {"format_version": FORMAT_VERSION, "prompt": self.prompt,
                "options": dataclasses.asdict(self.options), "shapes": self.shapes.to_dict()}
        # Masked text positions are exact zeros: compression roughly halves the file.
        with open(path, "wb") as f:
            np.savez_compressed(f, codes=self.codes, maps=self.maps, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> "SourceCapture":
        path = Path(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise InvalidRequestError(f"capture file {path} {what}: make one with `editgen capture`")
        if not zipfile.is_zipfile(path):
            raise InvalidRequestError(f"{path} is not an editgen capture (not an .npz archive): "
                                      "make one with `editgen capture`")
        try:
            with np.load(path, allow_pickle=False) as data:
                # Any .npz opens; only ours has these arrays. Checked before reading, so an
                # npz of object arrays is not answered with numpy's allow_pickle advice.
                missing = [k for k in ("codes", "maps", "meta") if k not in data.files]
                if missing:
                    raise InvalidRequestError(
                        f"{path} is not an editgen capture (no {', '.join(missing)} in it): "
                        "make one with `editgen capture`")
                meta = json.loads(str(data["meta"]))
                codes, maps = data["codes"], data["maps"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            if isinstance(exc, InvalidRequestError):
                raise
            if "allow_pickle" in str(exc):  # numpy's advice would be unsafe here: never unpickle
                raise InvalidRequestError(f"{path} is not an editgen capture (it stores Python objects): "
                                          "make one with `editgen capture`") from None
            raise InvalidRequestError(f"capture file {path} is unreadable ({first_line(exc)}): "
                                      "make it with `editgen capture`") from None
        if not isinstance(meta, dict):
            raise InvalidRequestError(f"{path} is not an editgen capture (its meta is not a settings object): "
                                      "make one with `editgen capture`")
        if meta.get("format_version") != FORMAT_VERSION:
            raise InvalidRequestError(f"capture file {path} has format {meta.get('format_version')}, "
                                      f"this version reads {FORMAT_VERSION}: capture the source again")
        try:
            shapes = ModelShapes.from_dict(meta["shapes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"capture file {path} has malformed model shapes ({first_line(exc)}): "
                                      "capture the source again") from None
        return cls(prompt=meta["prompt"], codes=codes.astype(np.int64), maps=maps,
                   options=GenerationOptions(**meta["options"]), shapes=shapes)

    def check_compatible(self, backend, specs: Sequence) -> None:
        if self.shapes != backend.shapes:
            raise InvalidRequestError("capture was made with another model "
                                      f"({self.shapes.num_layers} layers, {self.shapes.hidden_size} hidden): "
                                      "capture the source with this model")
        for spec in specs:
            if spec.source != self.prompt:
                raise InvalidRequestError(f"source prompt {spec.source!r} differs from the captured one "
                                          f"{self.prompt!r}: pass the captured prompt as --source")
