"""The API's request bodies (pydantic: the OpenAPI schema). They check shapes only
(types, known fields, text that is text): values are checked by the engine's own classes
(GenerationOptions, EditSpec, Region), so the server answers with the CLI's messages.
Unknown fields are refused, so no field can name a server-side file. Types are strict:
no number from a string or a bool, no flag from a number or "yes" (a JSON integer is a
number)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from editgen.engine.options import MAX_GUIDANCE
from editgen.engine.tokenizer import text_problem

Format = Literal["wav", "json"]


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_text", problem)
    return value


# Every text field: no unpaired surrogate, NUL or noncharacter (422 naming the field).
Text = Annotated[str, AfterValidator(_text)]


def _form_flag(value):
    """A multipart flag is the text `true` or `false`, nothing else ("yes", "1", "on")."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise PydanticCustomError("invalid_flag", "a flag is `true` or `false`")


FormFlag = Annotated[bool, BeforeValidator(_form_flag)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Sampling(_Body):
    seconds: float = Field(8.0, description="duration; rounded to the nearest frame (20 ms), at least 0.08 s")
    guidance: float = Field(3.0, ge=0, le=MAX_GUIDANCE,
                            description=f"classifier-free guidance scale (<= 1: off; at most {MAX_GUIDANCE:g})")
    top_k: int = Field(250, description="sample from the K most likely codes of each codebook")
    temperature: float = Field(1.0, description="sampling temperature (> 0)")
    greedy: bool = Field(False, description="argmax instead of sampling")
    seed: int = Field(0, description="random seed; each row has its own stream from it")


class Output(_Body):
    stream: bool = Field(False, description="send the audio chunk by chunk as it is decoded")
    format: Format = Field("wav", description="wav: the main audio (audio/wav); json: every audio (base64 WAV), "
                                              "codes and notes. Streaming: wav is a chunked WAV of the main audio, "
                                              "json is NDJSON events with every audio")


class GenerateBody(Sampling, Output):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "lofi piano", "seconds": 1.0, "seed": 1}]})
    prompt: Text = Field(description='text description, e.g. "lofi piano"')


class RegionBody(_Body):
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")


class EditBody(Sampling, Output):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"source": "lofi piano with soft drums", "target": "lofi guitar with soft drums", "seconds": 1.0,
         "word_weights": {"guitar": 1.5}, "region": {"start": 0.2, "end": 0.8}}]})
    source: Text | None = Field(None, description="source prompt (with capture_id: defaults to the captured one)")
    target: Text | None = Field(None, description="edited prompt (optional for op reweight)")
    op: Literal["replace", "refine", "reweight"] = "replace"
    word_weights: dict[Text, float] = Field(default_factory=dict, description="target word -> c in [-2, 2]")
    windows: dict[Text, float | Text] = Field(
        default_factory=dict, description="word (or 'default') -> F or 'START:END', fractions of the steps "
                                          "(Prompt-to-Prompt's windows)")
    setting: Literal["editgen-code", "paper-text", "hard"] = Field(
        "editgen-code", description="editgen-code: hard cross + self-attention b_i = (2i+1)/(2N) (the paper's "
                                    "released code); paper-text: cross a_i = i/N; hard: Prompt-to-Prompt")
    cross_blend: Text | None = Field(None, description="override: soft, hard, reversed, constant:X or X0,X1,...")
    self_blend: Text | None = Field(None, description="override: off, editgen, full, constant:X or X0,X1,...")
    self_window: float | Text | None = Field(None, description="self-injection steps: F or 'START:END'")
    reweight_mode: Literal["p2p", "editgen-code"] = "p2p"
    region: RegionBody | None = Field(None, description="edit only these seconds; outside, copy the source")
    capture_id: Text | None = Field(None, description="edit from a capture made by POST /v1/captures; "
                                                     "seconds, seed and sampling then come from the capture")


class CaptureBody(Sampling):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"source": "lofi piano with soft drums", "seconds": 1.0}]})
    source: Text = Field(description="source prompt")
    capture_dtype: Literal["fp16", "fp32"] = Field("fp16", description="precision of the stored maps")
