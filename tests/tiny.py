"""Tiny random-initialised chat models built offline, for tests that need a real model."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "You are solving Math problems. Only give the final answer between <answer> and </answer>.",
    "What is 37 + 48? <answer>85</answer> Incorrect. Please think again. Correct!",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = A B C D def return python",
] * 20


def build_tokenizer(corpus: list[str] | None = None):
    """The tiny BPE tokenizer, trained on ``corpus`` (default: the tiny model's own)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(_CORPUS if corpus is None else corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model_dir(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama with hidden size 32 and its tokenizer, saved to ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_vllm_model_dir(path: Path, conversation: list[dict[str, str]]) -> Path:
    """The tiny tokenizer and chat template on a 2-layer Llama with head size 32 (64 / 2 heads; vLLM's CPU attention
    has no kernel for the 16 of :func:`build_model_dir`), saved to ``path``.

    A random model hardly ever samples its EOS; so that replies can end on one, the token its greedy reply to
    ``conversation`` (primed with ``<answer>``) has fourth (new there) is made a second EOS in the generation config,
    which both vLLM and transformers read.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.1,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    prompt = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) + "<answer>"
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])  # (1, T)
    with torch.no_grad():
        greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    extra = next(t for k, t in enumerate(greedy) if k >= 3 and t not in greedy[:k])
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    model.generation_config.pad_token_id = tok.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
