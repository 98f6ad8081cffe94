"""Which model an application uses, from the environment.

``JETAGENTS_MODEL`` names it as pydantic-ai does, ``<provider>:<model>``:

* ``openai:<model>``: the OpenAI chat-completions API, or any endpoint speaking it (Ollama,
  vLLM, LM Studio) with ``OPENAI_BASE_URL`` (``http://127.0.0.1:11434/v1``); ``OPENAI_API_KEY``
  (a placeholder is sent when a local endpoint needs none).
* ``anthropic:<model>``: ``ANTHROPIC_API_KEY``, optionally ``ANTHROPIC_BASE_URL``.
* anything else pydantic-ai's ``infer_model`` knows.

Without it the application runs on a scripted model (pydantic-ai's ``FunctionModel`` or
``TestModel``, no network) and ``ModelChoice.scripted`` says so, for the application to tell
its users. The SDK clients are made with ``max_retries=0``: retries are the durable wrapper's
(``DurableAgent(retry=...)``), one mechanism, each try counted in the metrics.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.test import TestModel


@dataclass(frozen=True, slots=True)
class ModelChoice:
    model: Model
    description: str  # for logs and banners: "openai:gpt-4o-mini at http://...", "scripted"
    scripted: bool
    provider: str


def model_from_env(env: Mapping[str, str] | None = None, scripted: Model | None = None) -> ModelChoice:
    """The model ``JETAGENTS_MODEL`` names, else ``scripted`` (default: ``TestModel()``)."""
    env = os.environ if env is None else env
    name = env.get("JETAGENTS_MODEL", "").strip()
    if not name:
        return ModelChoice(scripted or TestModel(), "scripted (no JETAGENTS_MODEL set)", True, "scripted")
    provider, _, model_name = name.partition(":")
    if provider == "openai" and model_name:
        from openai import AsyncOpenAI
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        # the SDK imports its many response types on the first request: seconds of a blocked
        # event loop on a small machine, long enough for a host to lose its claims. Now, at start.
        importlib.import_module("openai.types.responses")
        importlib.import_module("openai.types.chat")
        base_url = env.get("OPENAI_BASE_URL") or None
        client = AsyncOpenAI(base_url=base_url, api_key=env.get("OPENAI_API_KEY") or "api-key-not-set", max_retries=0)
        where = f" at {base_url}" if base_url else ""
        return ModelChoice(
            OpenAIChatModel(model_name, provider=OpenAIProvider(openai_client=client)), name + where, False, "openai"
        )
    if provider == "anthropic" and model_name:
        from anthropic import AsyncAnthropic
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        importlib.import_module("anthropic.types.beta")
        aclient = AsyncAnthropic(
            api_key=env.get("ANTHROPIC_API_KEY"), base_url=env.get("ANTHROPIC_BASE_URL") or None, max_retries=0
        )
        return ModelChoice(
            AnthropicModel(model_name, provider=AnthropicProvider(anthropic_client=aclient)), name, False, "anthropic"
        )
    return ModelChoice(infer_model(name), name, False, provider or "unknown")
