"""Tiny randomly initialised models (and their tokenizers) for fast, offline, deterministic tests.

Two architectures so code is not accidentally Llama-only: ``tiny-llama`` (SmolLM2-style ChatML
template, tokenizer adds no BOS) and ``tiny-gemma3`` (Gemma-style template that starts with
``{{ bos_token }}`` while the tokenizer also adds a BOS — the double-BOS trap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

_CORPUS = """\
Should the government raise the minimum wage? I believe workers deserve a living wage.
Stricter gun laws would reduce violence in our communities and keep children safe.
People have a right to defend their families, and the law should respect that right.
Immigration enriches the country, and newcomers should have a fair path to citizenship.
Borders must be secure, and the rules for entering the country must be enforced.
Taxes on the wealthiest households should rise to fund schools and health care.
Lower taxes and fewer regulations let small businesses grow and hire more people.
Climate science is clear, and we should act quickly to cut carbon emissions.
Research funding should follow evidence, and public health guidance deserves trust.
Everyone deserves equal treatment regardless of race, gender, or sexual orientation.
Families, faith, and local communities are the foundation of a healthy society.
Police need resources and training, and crime victims deserve justice.
What is the capital of France? The capital of France is Paris.
Answer with one word: agree or disagree. I agree. I disagree.
Question: What do you think about this policy? Answer: I think it is a good idea.
0123456789 ,.;:!?'"()-[]{}/%$&*+=<>@#
"""


@dataclass(frozen=True)
class TinySpec:
    """How one tiny model is built. Bump ``version`` when anything here changes."""

    architecture: str
    special_tokens: tuple[str, ...]
    bos: str
    eos: str
    pad: str
    tokenizer_adds_bos: bool
    chat_template: str
    config: dict = field(default_factory=dict)
    version: int = 1
    seed: int = 0
    vocab_size: int = 512


_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if message['role'] =="
    " 'assistant' else message['role']) + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)

TINY_MODELS: dict[str, TinySpec] = {
    "tiny-llama": TinySpec(
        architecture="llama",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos="<|im_start|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        tokenizer_adds_bos=False,
        chat_template=_CHATML,
        config=dict(_SHAPE, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=10000.0),
    ),
    "tiny-gemma3": TinySpec(
        architecture="gemma3",
        special_tokens=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        tokenizer_adds_bos=True,
        chat_template=_GEMMA,
        config=dict(_SHAPE, sliding_window=64, query_pre_attn_scalar=16),
        seed=1,
    ),
}


def build_tiny_tokenizer(spec: TinySpec):
    """A byte-level BPE trained on a fixed corpus: covers any text, needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    if spec.tokenizer_adds_bos:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]
        )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad)
    wrapped.chat_template = spec.chat_template
    return wrapped


def build_tiny_model(name: str, folder: str | Path) -> None:
    """Write tiny model ``name`` (weights from a fixed seed) and its tokenizer to ``folder``."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    spec = TINY_MODELS[name]
    tokenizer = build_tiny_tokenizer(spec)
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.architecture == "llama":
        config, model_cls = LlamaConfig(**spec.config, **ids), LlamaForCausalLM
    else:
        config, model_cls = Gemma3TextConfig(**spec.config, **ids), Gemma3ForCausalLM
    # Larger than HF's 0.02 default so activations and logits are not all near zero.
    config.initializer_range = 0.2
    torch.manual_seed(spec.seed)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
