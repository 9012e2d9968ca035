"""dtype ``auto``: bf16 only where the hardware multiplies it, and always recorded as what ran."""

from __future__ import annotations

import logging
import warnings

import pytest

from assay.core import hardware
from assay.core.config import ConfigError, from_mapping
from assay.core.hardware import cpu_has_bf16, resolve_dtype
from assay.sampling.backends import HFOptions, resolve_options
from assay.train import TrainConfig, check, train_identity


@pytest.mark.parametrize("text,expected", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n", True),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n", False),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd\n", False),
])
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, text, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert cpu_has_bf16(str(info)) is expected


def test_no_cpuinfo_means_no_bf16(tmp_path):
    assert cpu_has_bf16(str(tmp_path / "missing")) is False


def test_auto_resolves_by_hardware_and_explicit_dtypes_pass_through(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto") == "float32"
    assert resolve_dtype("bfloat16") == "bfloat16" and resolve_dtype("float32", "cuda") == "float32"


def test_hf_options_record_the_resolved_dtype_never_auto(monkeypatch):
    for has, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: has)
        assert HFOptions().dtype == "auto"
        assert resolve_options("hf").dtype == want
        assert resolve_options("hf", HFOptions()).dtype == want
        assert resolve_options("hf", {"dtype": "float32"}).dtype == "float32"


def test_train_dtype_replaces_bf16_and_the_old_name_still_works():
    assert from_mapping(TrainConfig, {"bf16": True}).dtype == "bfloat16"
    assert from_mapping(TrainConfig, {"bf16": "false"}).dtype == "float32"
    with pytest.raises(ConfigError, match="old name of 'dtype'"):
        from_mapping(TrainConfig, {"bf16": True, "dtype": "float32"})
    with pytest.raises(ConfigError, match="dtype"):
        check(TrainConfig(dtype="fp8"))


def test_train_identity_holds_the_dtype_that_ran(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    cfg = dict(data=str(tmp_path / "x.jsonl"), model=str(tiny_model_dir))
    auto = train_identity(TrainConfig(**cfg))
    assert auto["dtype"] == "bfloat16"
    assert auto == train_identity(TrainConfig(**cfg, dtype="bfloat16"))
    assert train_identity(TrainConfig(**cfg, dtype="float32"))["dtype"] == "float32"


def test_engine_passes_the_cache_under_its_current_name(tiny_model_dir, caplog):
    """transformers deprecates ``past_key_values`` (removed in 5.40): the engine uses ``cache`` where it exists."""
    import inspect

    from assay import models
    from assay.sampling.engine import ContinuousBatcher, GroupRequest, cache_kwarg

    model, tok = models.load(str(tiny_model_dir), dtype="float32")
    has_new = "cache" in inspect.signature(model.forward).parameters
    assert cache_kwarg(model) == ("cache" if has_new else "past_key_values")

    class Old:
        def forward(self, input_ids=None, past_key_values=None):
            pass

    assert cache_kwarg(Old()) == "past_key_values"
    eng = ContinuousBatcher(model, tok, models.stats_from_config(model.config), max_batch=4, max_new_tokens=6)
    seen: list[set] = []
    forward = model.forward

    def spy(*args, **kwargs):  # what the engine hands the model, step by step
        seen.append(set(kwargs))
        return forward(*args, **kwargs)

    model.forward = spy
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        outs = list(eng.run([GroupRequest("a", [1, 2, 3], [(0, 0), (1, 1)])]))
    assert len(outs) == 2 and all(o.completion_tokens >= 1 for o in outs)
    decode_steps = [k for k in seen if "cache" in k or "past_key_values" in k]
    assert decode_steps and all(("cache" in k) == has_new and ("past_key_values" in k) != has_new
                                for k in decode_steps)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "past_key_values" in m], said


def test_less_gradient_under_bf16_autocast_stays_fp32_and_close_to_fp32(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    from assay import models
    from assay.select.less import lora_gradient

    model, _ = models.load(str(tiny_model_dir), dtype="float32")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # a trained-looking adapter: B = 0 would leave A without gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    ids = torch.arange(3, 19)
    labels = ids.clone()
    labels[:8] = -100
    g32 = lora_gradient(model, ids, labels, dtype="float32")
    g16 = lora_gradient(model, ids, labels, dtype="bfloat16")
    assert g16.dtype == torch.float32 and g16.shape == g32.shape
    assert not torch.equal(g16, g32)  # autocast really ran in bf16
    cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    assert cos > 0.98, cos


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trainer_gets_exactly_the_configured_precision_and_checkpointing(tmp_path, checkpointing, dtype):
    """TRL's SFTConfig turns gradient checkpointing and bf16 on by default; the FLOPs count and the
    identity describe the config, so the trainer must run exactly that."""
    from assay.train import sft_args

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated alias is set
        args = sft_args(TrainConfig(gradient_checkpointing=checkpointing), tmp_path, dtype, progress=False)
    assert bool(args.gradient_checkpointing) is checkpointing
    assert getattr(args, "activation_checkpointing", checkpointing) is checkpointing
    assert args.bf16 is (dtype == "bfloat16") and not args.fp16


def test_eval_protocol_holds_the_batch_shape_only_where_it_changes_greedy_outputs(tmp_path):
    from assay.core.records import Problem
    from assay.eval.stage import EvalConfig, protocol

    probs = [Problem(id="p1", question="1+1?", answer="2", source="t")]

    def pid(**kw):
        return protocol(EvalConfig(model="m", benchmark=str(tmp_path / "b.jsonl"), out=str(tmp_path / "e"), **kw),
                        probs)

    bf = pid(dtype="bfloat16", max_batch=64)
    assert bf["backend_options"] == {"dtype": "bfloat16", "max_batch": 64, "refill_fraction": 0.125}
    assert bf["protocol_id"] != pid(dtype="bfloat16", max_batch=128)["protocol_id"]
    fp = pid(dtype="float32", max_batch=64)
    assert fp["backend_options"] == {"dtype": "float32"}
    assert fp["protocol_id"] == pid(dtype="float32", max_batch=128)["protocol_id"] != bf["protocol_id"]


def test_a_run_records_auto_as_the_dtype_it_resolves_to(monkeypatch):
    """A run directory moved to other hardware redoes stages instead of mixing fp32 and bf16."""
    from assay.core.runs import concrete_dtypes

    cfg = {"dtype": "auto", "sample": {"dtype": "auto", "device": "cpu"}, "train": {"dtype": "float32"},
           "list": [{"dtype": "auto"}]}
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    on = concrete_dtypes(cfg)
    assert on == {"dtype": "bfloat16", "sample": {"dtype": "bfloat16", "device": "cpu"},
                  "train": {"dtype": "float32"}, "list": [{"dtype": "bfloat16"}]}
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert concrete_dtypes(cfg)["sample"]["dtype"] == "float32" and cfg["dtype"] == "auto"


def test_env_mixed_precision_never_overrides_the_configured_dtype(tmp_path, monkeypatch):
    from assay.train import sft_args

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    assert sft_args(TrainConfig(), tmp_path, "float32", progress=False).mixed_precision == "no"
    assert sft_args(TrainConfig(), tmp_path, "bfloat16", progress=False).mixed_precision == "bf16"


def test_old_bf16_switch_takes_only_true_or_false():
    with pytest.raises(ConfigError, match="expected true/false"):
        from_mapping(TrainConfig, {"bf16": "maybe"})
