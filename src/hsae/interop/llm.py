"""Chat backends for the judge and the explainer: any OpenAI-compatible endpoint, or the embedded model.

Both answer a list of chat requests and share an on-disk cache keyed by the backend, model,
messages and generation settings, so a rerun makes no new calls. A request that still fails
after the retries comes back as None (the caller counts it); nothing here raises per request.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..config import UserError
from ..files import atomic_write

Messages = list[dict]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/hsae/llm (or ~/.cache/hsae/llm): kept outside run directories."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hsae" / "llm"


class ResponseCache:
    """One JSON file per request key under a directory; safe for concurrent threads and processes."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(*parts) -> str:
        """sha256 of the JSON of everything that determines an answer."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        """The cached answer, or None."""
        if not self.path:
            return None
        f = self.path / key[:2] / f"{key}.json"
        try:
            content = json.loads(f.read_text())["content"]
        except (OSError, ValueError, KeyError, TypeError):  # a damaged entry is a miss, asked again
            return None
        return content if isinstance(content, str) else None

    def put(self, key: str, content: str) -> None:
        """Store an answer (atomically, so a killed run never leaves a half-written entry)."""
        if self.path:
            (self.path / key[:2]).mkdir(exist_ok=True)
            atomic_write(self.path / key[:2] / f"{key}.json", json.dumps({"content": content}).encode())


class Backend:
    """Common bookkeeping: cache lookups and counters (requests sent, cache hits, retries, failures)."""

    name = "backend"

    def __init__(self, cache: ResponseCache, max_tokens: int):
        self.cache, self.max_tokens = cache, max_tokens
        self.stats = {"requests": 0, "cached": 0, "retries": 0, "failed": 0}
        self._lock = threading.Lock()

    def _count(self, k: str, n: int = 1) -> None:
        with self._lock:
            self.stats[k] += n

    def _key(self, messages: Messages) -> str:
        return ResponseCache.key(self.name, self.model_id, messages, self.max_tokens)

    def answer(self, messages: Messages) -> str | None:
        """One request's answer (cached if possible), None if it failed."""
        return self.cached(self._key(messages), lambda: self._ask(messages))

    def cached(self, key: str, ask: Callable[[], str | None]) -> str | None:
        """The cache's entry for key, else ask() (stored unless None, which counts as failed)."""
        hit = self.cache.get(key)
        if hit is not None:
            self._count("cached")
            return hit
        out = ask()
        if out is None:
            self._count("failed")
        else:
            self.cache.put(key, out)
        return out

    def answer_all(self, requests: list[Messages], progress: Callable[[], None] | None = None) -> list[str | None]:
        """Answers of every request, in order."""
        out = []
        for r in requests:
            out.append(self.answer(r))
            if progress:
                progress()
        return out

    def _ask(self, messages: Messages) -> str | None:
        raise NotImplementedError


class OpenAIChat(Backend):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server, Ollama)."""

    name = "openai"

    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, cache: ResponseCache | None = None,
                 concurrency: int = 8, retries: int = 5, backoff: float = 1.0, max_tokens: int = 200,
                 timeout: float = 120.0):
        from openai import OpenAI

        super().__init__(cache or ResponseCache(None), max_tokens)
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not model:
            raise UserError("--api-model is required for an endpoint (or use --local)")
        if not base_url and not api_key:
            raise UserError("no endpoint: pass --base-url (or set OPENAI_BASE_URL / OPENAI_API_KEY), or use --local")
        # our own retry loop (max_retries=0 below) so retries are counted and the backoff is ours
        self.client = OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=timeout)
        self.model_id = model
        self.base_url = str(self.client.base_url)
        self.concurrency, self.retries, self.backoff = max(1, concurrency), max(0, retries), backoff
        self.last_error: str | None = None

    def _key(self, messages: Messages) -> str:
        return ResponseCache.key(self.name, self.base_url, self.model_id, messages, self.max_tokens)

    def _ask(self, messages: Messages) -> str | None:
        import openai

        for attempt in range(self.retries + 1):
            self._count("requests")
            try:
                r = self.client.chat.completions.create(model=self.model_id, messages=messages, temperature=0,
                                                        max_tokens=self.max_tokens)
                return (r.choices[0].message.content or "") if r.choices else ""
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                    openai.APITimeoutError) as e:
                err = e  # transient: back off and retry
            except openai.APIStatusError as e:
                if e.status_code not in (408, 409) and e.status_code < 500:
                    self.last_error = str(e)
                    return None  # a client error (bad model name, auth) will not change on retry
                err = e
            if attempt < self.retries:
                self._count("retries")
                time.sleep(self.backoff * (2 ** attempt) * (1 + 0.25 * random.random()))
        self.last_error = str(err)
        return None

    def answer_all(self, requests: list[Messages], progress: Callable[[], None] | None = None) -> list[str | None]:
        """Answers of every request, in order, `concurrency` at a time."""
        out: list[str | None] = [None] * len(requests)

        def one(i: int) -> None:
            out[i] = self.answer(requests[i])
            if progress:
                progress()

        with ThreadPoolExecutor(self.concurrency) as ex:
            list(ex.map(one, range(len(requests))))
        return out


class LocalChat(Backend):
    """A local causal LM with a chat template (default: the embedded SmolLM2-135M-Instruct), greedy."""

    name = "local"

    def __init__(self, model: str = "smollm2", cache: ResponseCache | None = None, max_tokens: int = 60,
                 loaded: tuple | None = None):
        from ..data.models import load_model

        super().__init__(cache or ResponseCache(None), max_tokens)
        self.model_id = model
        self.lm, self.tok = loaded or load_model(model)
        # Text the answer is started with (e.g. "HaveRelationship:"): a small local model then
        # answers in the asked format far more often; the returned answer includes it.
        self.prefill = ""

    def _key(self, messages: Messages) -> str:
        return ResponseCache.key(self.name, self.model_id, messages, self.max_tokens, self.prefill)

    def _ids(self, messages: Messages):
        """The prompt's token ids [1, T]: chat template (or plain text), then the prefill."""
        import torch

        if getattr(self.tok, "chat_template", None):
            ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)["input_ids"]
        else:  # a base model without a chat template: the messages as plain text
            ids = self.tok("\n\n".join(m["content"] for m in messages) + "\n", return_tensors="pt")["input_ids"]
        if self.prefill:
            pre = self.tok(self.prefill, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = torch.cat([ids, pre], 1)
        return ids

    def yes_probabilities(self, requests: list[Messages], progress: Callable[[], None] | None = None) -> list[float]:
        """Per request, P(Yes) / (P(Yes) + P(No)) of the next token after the prompt and prefill
        (the words with and without a leading space, summed): a score, where a sampled word is a coin."""
        import torch

        words = {w: sorted({self.tok(v, add_special_tokens=False)["input_ids"][0] for v in (w, " " + w)})
                 for w in ("Yes", "No")}

        def score(m: Messages) -> str:
            self._count("requests")
            with torch.inference_mode():
                logp = torch.log_softmax(self.lm(input_ids=self._ids(m)).logits[0, -1].float(), -1)
            y, n = (torch.logsumexp(logp[words[w]], 0) for w in ("Yes", "No"))
            return repr(float(torch.sigmoid(y - n)))

        out = []
        for m in requests:
            # cached like an answer (as its repr), so an interrupted judge resumes and a rerun asks nothing
            key = ResponseCache.key(self.name, self.model_id, m, "p_yes", self.prefill)
            out.append(float(self.cached(key, lambda: score(m))))
            if progress:
                progress()
        return out

    def _ask(self, messages: Messages) -> str | None:
        import torch

        self._count("requests")
        with torch.inference_mode():
            ids = self._ids(messages)
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
            out = self.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=self.max_tokens, pad_token_id=pad)
        return self.prefill + self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
