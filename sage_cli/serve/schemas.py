"""Pydantic models of the request and response bodies, for the OpenAPI schema that `/docs` shows.

They document the wire format; the checks themselves are `protocol.parse_chat`'s (its errors are
OpenAI-shaped 400s with the exact param and code, which pydantic's 422s are not).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class ImageUrl(BaseModel):
    url: str = Field(description="data:image/png;base64,... (the server never fetches a URL)")


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Union[TextPart, ImagePart]], None] = None


class SageExtension(BaseModel):
    facts: list[str] = Field(default_factory=list, description="fact sentences, used only with images")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The last user message's images are the TEST image, then the optional normal REFERENCE."""

    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    messages: list[Message]
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2, description="0 (greedy) by default, not OpenAI's 1")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, description="only 1")
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    sage: Optional[SageExtension] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AnomalySummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    peak: list[int]
    max: float
    mean: float
    grid: list[int]
    selected: list


class SageResult(BaseModel):
    p_yes: float
    anomaly: Optional[AnomalySummary] = None
    # with a checkpoint calibrated by `sage calibrate` (models/calibration.detect), one-shot only
    p_defect: Optional[float] = Field(None, description="calibrated P(defect) of the image pair (a calibrated "
                                      "checkpoint, with a reference image); p_yes stays the raw first-token P(yes)")
    verdict: Optional[Literal["defect", "normal"]] = Field(None, description="p_defect at the checkpoint's stored "
                                                          "threshold")
    threshold: Optional[float] = Field(None, description="the stored threshold the verdict uses")
    guided: bool = Field(False, description="the answer's first word (yes/no) came from the calibrated detection "
                         "and the anomaly map, not from the model (`sage serve --guided`)")
    contradicted: bool = Field(False, description="a guided answer whose words after its first yes/no say the "
                               "opposite (read as `sage bench` reads answers): trust the yes/no and the map")


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    sage: Optional[SageResult] = Field(None, description="present when images were given")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
