"""Learned text tokens (textual inversion, Gal et al. 2022) for any tokenizer + text encoder.

Each concept (e.g. "bottle/broken_large") gets N placeholder tokens `<sias-k-j>` added to the
tokenizer. The text encoder's token table is swapped for a `PlaceholderEmbedding` that looks up
the frozen table for ordinary ids and `LearnedTokens.vectors` for placeholder ids, so the frozen
table keeps its name in the state dict and only the placeholder vectors train and get saved.
Works with CLIP (SD v1, tiny) and LDM-BERT alike: both read ids through their input embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.errors import BenchError


class PlaceholderEmbedding(nn.Embedding):
    """The frozen token table (same weight Parameter, same state-dict key) plus placeholder rows."""

    def __init__(self, base: nn.Embedding, owner: "LearnedTokens"):
        super().__init__(base.num_embeddings, base.embedding_dim, padding_idx=base.padding_idx, _weight=base.weight)
        self.weight = base.weight  # the very Parameter (nn.Embedding re-wraps `_weight` as trainable)
        self.__dict__["owner"] = owner  # a plain reference: the vectors are registered on the owner
        self.register_buffer("slot", torch.full((1,), -1, dtype=torch.long), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        slot = self.slot[ids.clamp(max=len(self.slot) - 1)].masked_fill(ids >= len(self.slot), -1)
        learned = slot >= 0
        out = super().forward(ids.masked_fill(learned, 0))
        if not learned.any():
            return out
        table = torch.cat(list(self.owner.vectors)).to(out.dtype)
        return torch.where(learned[..., None], table[slot.clamp(min=0)], out)


class LearnedTokens(nn.Module):
    def __init__(self, tokenizer, text_encoder: nn.Module, per_concept: int, init_word: str = "anomaly"):
        super().__init__()
        self.tokenizer = tokenizer
        self.per_concept = per_concept
        self.init_word = init_word
        self.concepts: list[str] = []
        self.vectors = nn.ParameterList()  # one (per_concept, dim) tensor per concept
        base = text_encoder.get_input_embeddings()
        # plain references: the frozen encoder (and its table) must not count as this module's state
        self.__dict__["embedding"] = PlaceholderEmbedding(base, self)
        self.__dict__["text_encoder"] = text_encoder
        _replace_module(text_encoder, base, self.embedding)

    def placeholders(self, concept: str) -> list[str]:
        return [f"<sias-{self.concepts.index(concept)}-{j}>" for j in range(self.per_concept)]

    def add(self, concept: str) -> None:
        """Register a concept: N new tokens, initialised to the mean embedding of `init_word`."""
        if concept in self.concepts:
            return
        self.concepts.append(concept)
        names = self.placeholders(concept)
        self.tokenizer.add_tokens(names)
        ids = self.tokenizer.convert_tokens_to_ids(names)
        encoded = self.tokenizer(" ".join(names), add_special_tokens=False).input_ids
        if encoded != ids:
            raise BenchError(f"tokenizer {type(self.tokenizer).__name__} splits placeholder tokens {names}")
        slot = self.embedding.slot
        if max(ids) >= len(slot):
            slot = torch.cat([slot, slot.new_full((max(ids) + 1 - len(slot),), -1)])
        base = len(self.concepts) * self.per_concept - self.per_concept
        slot[torch.tensor(ids, device=slot.device)] = torch.arange(base, base + self.per_concept, device=slot.device)
        self.embedding.slot = slot
        init_ids = self.tokenizer(self.init_word, add_special_tokens=False).input_ids
        weight = self.embedding.weight
        init = weight[torch.tensor(init_ids, device=weight.device)].mean(0).detach()
        self.vectors.append(nn.Parameter(init.repeat(self.per_concept, 1).clone()))

    def prompt(self, concept: str, text: str) -> str:
        return f"{text} {' '.join(self.placeholders(concept))}".strip()

    def input_ids(self, prompts: list[str], max_length: int) -> torch.Tensor:
        return self.tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                              return_tensors="pt").input_ids

    def encode(self, prompts: list[str], max_length: int) -> torch.Tensor:
        """(B, L, D) text-encoder states; gradients reach the placeholder vectors only."""
        ids = self.input_ids(prompts, max_length).to(self.embedding.weight.device)
        return self.text_encoder(ids)[0]

    def drop_absent_gradients(self) -> None:
        """Set the gradient of every concept no prompt of the batch used to None, so AdamW skips it.
        Every vector gets a gradient (the lookup concatenates them all), zero for an absent concept,
        and AdamW would still step it: weight decay and, mostly, its stale Adam moments move it
        (measured on the tiny backbone, lr 5e-3: an absent concept's vector changed by up to 0.01
        per element over 5 steps). Call between backward and the optimizer step: after DDP's
        all-reduce a concept used on any rank has a non-zero gradient on all, so ranks stay equal."""
        for vector in self.vectors:
            if vector.grad is not None and not vector.grad.any():
                vector.grad = None

    # -- checkpoints: concepts by name, vectors as one tensor each --------------------------
    def trained_state(self) -> dict:
        return {"concepts": list(self.concepts), "per_concept": self.per_concept,
                "vectors": [v.detach().cpu().clone() for v in self.vectors]}

    def load_trained_state(self, state: dict) -> None:
        if state["per_concept"] != self.per_concept:
            raise BenchError(f"checkpoint has {state['per_concept']} tokens per concept, options say {self.per_concept}")
        for concept, vector in zip(state["concepts"], state["vectors"]):
            self.add(concept)
            with torch.no_grad():
                self.vectors[self.concepts.index(concept)].copy_(vector)


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, module in root.named_modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise ValueError("input embedding not found inside the text encoder")
