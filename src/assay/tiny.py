"""A tiny random Llama and a tokenizer trained on the spot, for tests, benchmarks and smoke runs.

They need no download and build in about a second, so every stage can be exercised end to end
on any machine; the numbers they produce mean nothing about reasoning.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "What is 12 + 7? The answer is 19.",
    "Tom has 3 apples and buys 5 more. How many apples does he have? 3 + 5 = 8, so the answer is \\boxed{8}.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Calculate 5 - 3 - 6. State the final answer to the following arithmetic problem: 4 - 1 - 7 =",
    "0123456789 + - * / = ( ) { } \\ . , ? ! : ; # the a an is of to and in that it for on with as",
]


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def build_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A random Llama sized for a tokenizer from ``build_tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(path: str | Path, seed: int = 0, layers: int = 2) -> Path:
    """Write a tiny model folder usable as a model spec."""
    path = Path(path)
    tok = build_tokenizer()
    build_model(tok, seed=seed, layers=layers).save_pretrained(path)
    tok.save_pretrained(path)
    return path
