"""The API's request bodies (pydantic: the OpenAPI schema), made from the engine's one
declaration of request fields (editgen.engine.request_fields): the generation options
and edit fields, their types, defaults, choices and descriptions come from there, so
the JSON bodies, the multipart forms and the CLI cannot drift apart.

They check shapes only (types, known fields, text that is text): values are checked by
the engine's own classes (GenerationOptions, EditSpec, Region), so the server answers
with the CLI's messages. Unknown fields are refused (JSON and forms), so no field can name
a server-side file. JSON bodies are strict: no number from a string or a bool, no flag
from a number or "yes" (a JSON integer is a number). A form's values are text, parsed as
the field's type; its flags are `true` or `false`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic_core import PydanticCustomError

from editgen.engine.capture import MAP_DTYPES
from editgen.engine.edit.spec import EditSpec
from editgen.engine.options import GenerationOptions
from editgen.engine.request_fields import RequestField, parse_word_items, request_fields
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

_JSON_TYPES = {"number": float, "integer": int, "text": Text, "window": float | Text, "switch": bool,
               "word_numbers": dict[Text, float], "word_windows": dict[Text, float | Text]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Form(BaseModel):
    """A multipart form: lax, as its values are text to parse (flags: FormFlag)."""

    model_config = ConfigDict(extra="forbid")


def _json_type(f: RequestField, form: bool = False):
    kind = f.option.kind
    t = Literal[f.option.choices] if kind == "choice" else FormFlag if form and kind == "switch" else _JSON_TYPES[kind]
    return t | None if f.default is None else t


def _fields(cls, *, form: bool = False, skip: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
    """pydantic field definitions of `cls`'s declared fields under their API names. form:
    word maps become their repeated item field (word=WORD=C). `optional`: required fields
    that may be left out here (None)."""
    out: dict[str, Any] = {}
    for f in request_fields(cls):
        if f.attribute in skip:
            continue
        name, t, default = f.name, _json_type(f, form), f.default
        if form and f.option.item:
            name, t, default = f.option.item, list[Text], []
        if f.attribute in optional:
            t, default = t | None, None
        required = f.required and f.attribute not in optional
        out[name] = (t, Field(description=f.option.help) if required else Field(default, description=f.option.help))
    return out


_STREAM_DOC = "send the audio chunk by chunk as it is decoded"
_FORMAT_DOC = ("wav: the main audio (audio/wav); json: every audio (base64 WAV), codes and notes. Streaming: wav is a "
               "chunked WAV of the main audio, json is NDJSON events with every audio")


class Output(_Body):
    stream: bool = Field(False, description=_STREAM_DOC)
    format: Format = Field("wav", description=_FORMAT_DOC)


class RegionBody(_Body):
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")


Sampling = create_model("Sampling", __base__=_Body, **_fields(GenerationOptions))
# Real-audio requests take their duration from the audio (forms only).
_AUDIO_SAMPLING = _fields(GenerationOptions, form=True, skip=("seconds",))

_PROMPT = (Text, Field(description='text description, e.g. "lofi piano"'))
_REGION_DOC = "edit only these seconds; outside, copy the source"
_CAPTURE_DTYPE = (Literal[tuple(MAP_DTYPES)], Field("fp16", description="precision of the stored maps"))
_EDIT = _fields(EditSpec, optional=("source",))

GenerateBody = create_model("GenerateBody", __base__=(Sampling, Output), prompt=_PROMPT)
EditBody = create_model(
    "EditBody", __base__=(Sampling, Output), **_EDIT,
    region=(RegionBody | None, Field(None, description=_REGION_DOC)),
    capture_id=(Text | None, Field(None, description="edit from a capture made by POST /v1/captures; seconds, "
                                                     "seed and sampling then come from the capture")))
CaptureBody = create_model("CaptureBody", __base__=Sampling, source=_fields(EditSpec)["source"],
                           capture_dtype=_CAPTURE_DTYPE)

# Multipart forms of the upload endpoints: the same fields, word maps as repeated items.
_AUDIO = (UploadFile, Field(description="WAV, FLAC or OGG"))
EditAudioForm = create_model(
    "EditAudioForm", __base__=_Form, **_AUDIO_SAMPLING, stream=(FormFlag, Field(False, description=_STREAM_DOC)),
    format=(Format, Field("wav", description=_FORMAT_DOC)), audio=_AUDIO, **_fields(EditSpec, form=True),
    region=(Text | None, Field(None, description="START:END seconds: " + _REGION_DOC)))
CaptureAudioForm = create_model("CaptureAudioForm", __base__=_Form, **_AUDIO_SAMPLING, audio=_AUDIO,
                                source=_fields(EditSpec)["source"], capture_dtype=_CAPTURE_DTYPE)

for _model, _example in ((GenerateBody, {"prompt": "lofi piano", "seconds": 1.0, "seed": 1}),
                         (EditBody, {"source": "lofi piano with soft drums", "target": "lofi guitar with soft drums",
                                     "seconds": 1.0, "word_weights": {"guitar": 1.5},
                                     "region": {"start": 0.2, "end": 0.8}}),
                         (CaptureBody, {"source": "lofi piano with soft drums", "seconds": 1.0})):
    _model.model_config["json_schema_extra"] = {"examples": [_example]}


def body_from_form(form: BaseModel, body: type[BaseModel]) -> BaseModel:
    """An upload's form as the JSON body of the same request: repeated word items parsed
    (WORD=C, WORD=F|START:END, with the CLI's messages), region START:END into its object."""
    from editgen.engine.jobs import Region

    values = form.model_dump(exclude={"audio"})
    for f in request_fields(EditSpec):
        if f.option.item and f.option.item in values:
            values[f.name] = parse_word_items(values.pop(f.option.item), f)
    if values.get("region") is not None:
        span = Region.parse(values["region"])
        values["region"] = RegionBody(start=span.start, end=span.end)
    return body(**values)


def spec_fields(body: BaseModel) -> dict:
    """EditSpec's keyword arguments but source, from an EditBody."""
    return {f.attribute: getattr(body, f.name) for f in request_fields(EditSpec) if f.attribute != "source"}


def option_fields(body: BaseModel, **fixed) -> dict:
    """GenerationOptions' keyword arguments from a body (`fixed` for any it must not set)."""
    return {f.attribute: fixed.get(f.attribute, getattr(body, f.name)) for f in request_fields(GenerationOptions)}
