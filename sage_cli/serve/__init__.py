"""`sage serve`: an OpenAI-compatible chat server over a SAGE model (FastAPI under uvicorn).

Request conventions (POST /v1/chat/completions):

* Images come inline as `image_url` parts with `data:image/...;base64,...` URLs (the server never
  fetches a URL). Only the last user message's images are read: the first is the TEST image, the
  second (optional) the normal REFERENCE, as in `sage infer TEST REF`. That message's text parts
  (joined by newlines) are the question; without text the default inspection question is asked.
* Fact sentences go in the extension field `"sage": {"facts": ["...", ...]}` of the request body
  (openai client: `extra_body={"sage": {"facts": [...]}}`). They are used only with images.
* With images the answer is SAGE's (its own system prompt: other messages are not read; resend the
  images to ask another question). Without images, the whole conversation (text parts only) goes to
  the backbone's LLM through its chat template. `--llm-only` refuses images.
* Responses are `chat.completion` objects (chunks when `stream: true`) plus, when images were given,
  `"sage": {"p_yes": ..., "anomaly": {"peak", "max", "mean", "grid", "selected"} | null}` (the anomaly
  map needs a reference). `temperature` defaults to 0 (greedy), not OpenAI's 1.

Modules: `protocol` (request validation, response shapes, errors), `schemas` (pydantic models of the
bodies, for /docs), `images` (decoding with size guards), `generate` (a request on the engine),
`worker` (the one model worker and its bounded queue), `metrics` (/metrics), `app` (the ASGI app),
`server` (uvicorn on a bound socket: make_server).
"""
