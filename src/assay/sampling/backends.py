"""The one way to build a Generator: ``make_generator(backend, model, options)``.

Why one place: sample, eval, judge, serve and the studies each used to build generators their
own way (eval and the studies hard-coded ``hf``, serve constructed ``HFGenerator`` itself, the
factories dropped options they did not know without a word), so a backend's setting could work
in one command and be ignored in another. Here each backend declares its options as a dataclass
(lm-eval ``model_args`` style) and checks them; an unknown option is an error naming the backend
and the key with a did-you-mean, a bad value names the key.

Options come from, lowest to highest: the dataclass defaults, defaults the calling stage chooses
(the sampler's request cache beside its output), the stage's flat flags that a backend maps into
its options (``--dtype``, ``--max-batch``, ``--base-url``: ``FLAT``), and the stage's
``backend_options`` mapping (YAML section, ``backend_options.n_params=7e9`` overrides, or
``--backend-options n_params=7e9,concurrency=4``). Flat flags a backend has no use for are
ignored, as they always were (``--dtype`` means nothing to a remote server).

``PROTOCOL`` lists the options that change what the model outputs for a fixed request; eval
records them in its protocol so results from different backends never compare as equal.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping, Optional

from assay.core.checks import one_of
from assay.core.config import ConfigError, from_mapping, parse_option_string
from assay.core.hardware import DTYPES, resolve_dtype
from assay.core.registry import Registry, did_you_mean
from assay.sampling.base import Generator
from assay.sampling.openai_api import OpenAIGenerator
from assay.sampling.vllm_backend import VLLMGenerator, VLLMOptions


@dataclass
class HFOptions:
    """The local transformers backend (``assay.sampling.hf``)."""

    FLAT: ClassVar[dict] = {"dtype": "dtype", "device": "device", "max_batch": "max_batch",
                            "trust_remote_code": "trust_remote_code"}
    # dtype changes greedy outputs; device is left out as eval always had it (one number on CPU and GPU).
    PROTOCOL: ClassVar[tuple] = ("dtype",)
    dtype: str = "auto"  # bf16 where the hardware has it (assay.core.hardware); resolved before use
    device: str = "cpu"
    max_batch: int = 32
    trust_remote_code: bool = False
    refill_fraction: float = 0.125

    def validate(self, key: Callable[[str], str]) -> None:
        if self.dtype not in DTYPES:
            raise _bad(key("dtype"), f"'{self.dtype}' is not a known dtype{did_you_mean(self.dtype, list(DTYPES))}")
        if self.max_batch < 1:
            raise _bad(key("max_batch"), f"must be at least 1, got {self.max_batch!r}")
        if not 0 < self.refill_fraction <= 1:
            raise _bad(key("refill_fraction"), f"must be in (0, 1], got {self.refill_fraction!r}")

    def batch_numerics(self) -> dict:
        """The batch-shape settings, where they change greedy outputs: measured on the quickstart's
        held-out set, bf16 greedy pass@1 of one model moved from 0.208 (max_batch 64) to 0.188 (128),
        since a row's rounding depends on the shapes it is multiplied in; fp32 rounding differences
        that small do not flip the argmax in practice (the engine matches ``generate`` token for token)."""
        if self.dtype in ("float32", "float64"):
            return {}
        return {"max_batch": self.max_batch, "refill_fraction": self.refill_fraction}

    def resolved(self) -> "HFOptions":
        """``dtype: auto`` made concrete for this device: what runs, and what protocols record."""
        return dataclasses.replace(self, dtype=resolve_dtype(self.dtype, self.device))


@dataclass
class OpenAIOptions:
    """The OpenAI-compatible client (``assay.sampling.openai_api``)."""

    # --max-batch has always set the client's concurrency, the nearest thing it has to a batch.
    FLAT: ClassVar[dict] = {"base_url": "base_url", "max_batch": "concurrency"}
    # chat vs completions API: the same messages become different prompts.
    PROTOCOL: ClassVar[tuple] = ("chat",)
    base_url: str = field(default="", repr=False)  # may hold credentials: never in a repr or traceback
    concurrency: int = 8
    cache: Optional[str] = None
    n_params: Optional[float] = None
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 600.0
    chat: bool = True

    def validate(self, key: Callable[[str], str]) -> None:
        if self.concurrency < 1:
            raise _bad(key("concurrency"), f"must be at least 1, got {self.concurrency!r}")
        if self.max_retries < 0:
            raise _bad(key("max_retries"), f"must be at least 0, got {self.max_retries!r}")
        for name in ("backoff_s", "timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and (v > 0 if name == "timeout_s" else v >= 0)):
                raise _bad(key(name), f"must be a {'positive' if name == 'timeout_s' else 'non-negative'} "
                                      f"number of seconds, got {v!r}")
        if self.n_params is not None and not (math.isfinite(self.n_params) and self.n_params > 0):
            raise _bad(key("n_params"), f"must be a positive parameter count (e.g. 7e9), got {self.n_params!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or ""):
            # The value is not echoed: a key pasted here by mistake must not reach the terminal.
            raise _bad(key("api_key_env"), "must be the name of an environment variable holding the key "
                                           "(the key goes in that variable, never in a config)")


def _build_hf(model: str, o: HFOptions) -> Generator:
    # Imported on use: the CLI imports this module to check configs, torch should not load then.
    from assay.sampling.hf import HFGenerator

    return HFGenerator(model, **dataclasses.asdict(o))


def _build_openai(model: str, o: OpenAIOptions) -> Generator:
    return OpenAIGenerator(model, **dataclasses.asdict(o))


def _build_vllm(model: str, o: VLLMOptions) -> Generator:
    return VLLMGenerator(model, o)


@dataclass(frozen=True)
class Backend:
    """A registered backend: its options dataclass and how to build a Generator from them."""

    options: type
    build: Callable[[str, Any], Generator]


BACKENDS: Registry[Backend] = Registry("generation backend")
"""name -> Backend. A plugin adds ``BACKENDS.add("sglang", Backend(SGLangOptions, build))``."""
BACKENDS.add("hf", Backend(HFOptions, _build_hf))
BACKENDS.add("openai", Backend(OpenAIOptions, _build_openai))
BACKENDS.add("vllm", Backend(VLLMOptions, _build_vllm))


def _bad(key: str, detail: str) -> ConfigError:
    return ConfigError(key, key, detail)


def resolve_options(backend: str, options: Any = None, *, flat: Optional[Mapping] = None,
                    defaults: Optional[Mapping] = None, section: str = "") -> Any:
    """The checked options dataclass of ``backend`` (precedence in the module docstring).

    ``flat`` maps a stage's flat config fields to their values; ``section`` is the stage's key in
    a pipeline, so errors name ``sample.backend_options.n_params`` or ``sample.max_batch``.
    Raises ConfigError naming the key of the value that is wrong.
    """
    def at(name: str) -> str:
        return f"{section}.{name}" if section else name

    spec = BACKENDS.get(backend)
    if isinstance(options, spec.options):
        options.validate(lambda n: at(f"backend_options.{n}"))
        return options.resolved() if hasattr(options, "resolved") else options
    cls = spec.options
    names = [f.name for f in fields(cls)]
    if isinstance(options, str):
        options = parse_option_string(options, at("backend_options"))
    if options is not None and not isinstance(options, Mapping):
        raise _bad(at("backend_options"), f"expected a mapping of {backend} options, got {options!r}")
    data: dict = {k: v for k, v in (defaults or {}).items() if k in names}
    source = {k: at(f"backend_options.{k}") for k in names}
    for field_name, value in (flat or {}).items():
        opt_name = cls.FLAT.get(field_name)
        if opt_name is not None and value is not None:
            data[opt_name], source[opt_name] = value, at(field_name)
    for k, v in (options or {}).items():
        if k not in names:
            raise _bad(at(f"backend_options.{k}"),
                       f"'{k}' is not an option of backend '{backend}'{did_you_mean(str(k), names)}")
        data[k], source[k] = v, at(f"backend_options.{k}")
    try:
        built = from_mapping(cls, data, at("backend_options"))
    except ConfigError as exc:
        # from_mapping names the field; name where the value came from (a flag or backend_options).
        name = exc.key.rsplit(".", 1)[-1]
        raise _bad(source.get(name, exc.key), f"{exc.detail} (an option of backend '{backend}')") from None
    built.validate(lambda n: source[n])
    return built.resolved() if hasattr(built, "resolved") else built


def options_of(cfg: Any, backend: Optional[str] = None, defaults: Optional[Mapping] = None, section: str = "") -> Any:
    """A stage config's backend options: its flat fields the backend maps, then its ``backend_options``."""
    backend = backend or cfg.backend
    cls = BACKENDS.get(backend).options
    flat = {f: getattr(cfg, f) for f in cls.FLAT if hasattr(cfg, f)}
    return resolve_options(backend, getattr(cfg, "backend_options", None), flat=flat, defaults=defaults,
                           section=section)


def protocol_options(options: Any) -> dict:
    """The options that change outputs (``PROTOCOL``), for eval's protocol and the sampler's identity."""
    return {n: getattr(options, n) for n in type(options).PROTOCOL}


def greedy_protocol(options: Any) -> dict:
    """:func:`protocol_options` plus the batch shapes where they change greedy outputs (eval's protocol).

    Not part of the sampler's resume identity: a sampled draw from another batch shape is as good a
    draw, so a resumed sampling run may still change ``--max-batch``."""
    numerics = getattr(options, "batch_numerics", None)
    return {**protocol_options(options), **(numerics() if numerics else {})}


def make_generator(backend: str, model: str, options: Any = None) -> Generator:
    """Build ``backend``'s Generator for ``model``: the only constructor the stages use.

    ``options``: that backend's options dataclass, a mapping of its option names, a
    ``"k=v,k=v"`` string, or None for the defaults; checked before anything loads.
    """
    return BACKENDS.get(backend).build(model, resolve_options(backend, options))


def check_backend(key_of, cfg: Any, field: str = "backend") -> None:
    """A stage's backend name and its options (unknown ones, bad values), as the stage will build them."""

    one_of(key_of(field), getattr(cfg, field), BACKENDS.names(), "generation backend")
    options_of(cfg, getattr(cfg, field), section=key_of("").rstrip("."))
