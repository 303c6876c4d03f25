"""A tiny Llama with random weights and a locally trained byte-level BPE tokenizer.

Nothing is downloaded: the tokenizer is trained on text generated here, the weights are random.
Its output is noise, but it exercises a real vLLM engine's scheduling, paging and prefix caching.
Built in a few seconds::

    python -m adapters.vllm.tools.tiny_model /tmp/tiny-llama
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

# Assistant tool calls are rendered as the JSON vLLM's guided decoding generates for
# ``tool_choice="required"`` (compact, as with ``disable_any_whitespace``), so a conversation's
# next prompt starts with the tokens the previous turn computed and its cached prefix is reused.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and m.get('tool_calls') %}<|assistant|>["
    "{% for c in m['tool_calls'] %}"
    "{% set f = c['function'] if c['function'] is defined else c %}"
    '{"name":{{ f[\'name\'] | tojson }},"parameters":'
    "{% if f['arguments'] is string %}{{ f['arguments'] }}"
    "{% else %}{{ f['arguments'] | tojson(separators=(',', ':')) }}{% endif %}}"
    "{% if not loop.last %},{% endif %}"
    "{% endfor %}]\n"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] if m['content'] is string else '' }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MARKER = "lamps_tiny_model.json"
TOOL_CALL_PARSER = "pythonic"  # accepts this tokenizer (hermes and llama3_json refuse it)
_WORDS = [
    "the",
    "agent",
    "calls",
    "a",
    "tool",
    "and",
    "waits",
    "for",
    "search",
    "results",
    "while",
    "the",
    "model",
    "decodes",
    "tokens",
    "memory",
    "cache",
    "block",
    "schedule",
    "request",
    "preserve",
    "swap",
    "discard",
    "latency",
    "queue",
    "time",
    "answer",
]


def _corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40))) for _ in range(n)]


def build_tiny_llama(path: str | Path, *, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a loadable model folder (config, random safetensors weights, tokenizer) at ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(2000, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=8192,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        torch_dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    (out / MARKER).write_text(json.dumps({"seed": seed, "vocab": len(fast)}))
    return out


def is_tiny_model(folder: str | Path) -> bool:
    """Whether ``folder`` was built by :func:`build_tiny_llama`."""
    return (Path(folder) / MARKER).is_file()


if __name__ == "__main__":
    print(build_tiny_llama(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"))
