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
from editgen.errors import InvalidRequestError

FORMAT_VERSION = 1


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
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                codes, maps = data["codes"], data["maps"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise InvalidRequestError(f"capture file {path} is unreadable ({exc}): make it with `editgen capture`") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise InvalidRequestError(f"capture file {path} has format {meta.get('format_version')}, "
                                      f"this version reads {FORMAT_VERSION}: capture the source again")
        return cls(prompt=meta["prompt"], codes=codes.astype(np.int64), maps=maps,
                   options=GenerationOptions(**meta["options"]), shapes=ModelShapes.from_dict(meta["shapes"]))

    def check_compatible(self, backend, specs: Sequence) -> None:
        if self.shapes != backend.shapes:
            raise InvalidRequestError("capture was made with another model "
                                      f"({self.shapes.num_layers} layers, {self.shapes.hidden_size} hidden): "
                                      "capture the source with this model")
        for spec in specs:
            if spec.source != self.prompt:
                raise InvalidRequestError(f"source prompt {spec.source!r} differs from the captured one "
                                          f"{self.prompt!r}: pass the captured prompt as --source")
