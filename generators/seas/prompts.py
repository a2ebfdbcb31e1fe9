"""SeaS' Unbalanced Abnormal (UA) text prompt and the learning rates of what it trains.

Appendix A.3: per product, N' = 1 normal token <ob> and N = 4 anomaly tokens <df> per anomaly
type; the prompt of type n (counted from 1) is

    P_n = "a <ob> with <df_{4n-3}>, <df_{4n-2}>, <df_{4n-1}>, <df_{4n}>"

and normal images use "a <ob>". Each token is one new row of the text encoder's lookup (A.3:
U -> U' in R^{(b+1) x 768}), trained together with the whole U-Net (U-Net AdamW lr 4e-6, text
embeddings 4e-5). Table 9 ablates N' and N, so both are parameters.

The rows live in the project's `LearnedTokens` with one token per concept: every <ob> and every
<df_k> is its own one-token concept, so one table holds the unbalanced counts (1 vs 4 per type)
without a second placeholder mechanism.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from generators.diffusion.tokens import LearnedTokens
from generators.seas.options import ANOMALY_TOKENS, NORMAL_TOKENS, TOKEN_LR, UNET_LR


class UnbalancedPrompts:
    """The UA prompt of one product: `normal_prompt()`, `anomaly_prompt(defect_type)`, and where
    each learned token sits in a tokenized prompt (for the DA loss)."""

    def __init__(self, tokens: LearnedTokens, product: str, defect_types: Sequence[str],
                 n_normal: int = NORMAL_TOKENS, n_anomaly: int = ANOMALY_TOKENS):
        if tokens.per_concept != 1:
            raise ValueError("UnbalancedPrompts registers one concept per token: use LearnedTokens(per_concept=1)")
        if n_normal < 1 or n_anomaly < 1:
            raise ValueError("a UA prompt needs at least one <ob> and one <df> token")
        self.tokens, self.product = tokens, product
        self.defect_types = list(defect_types)
        self.n_normal, self.n_anomaly = n_normal, n_anomaly
        for concept in self._ob_concepts() + [c for d in self.defect_types for c in self._df_concepts(d)]:
            tokens.add(concept)

    # -- names ----------------------------------------------------------------------------------
    def _ob_concepts(self) -> list[str]:
        return [f"{self.product}/<ob>/{j}" for j in range(self.n_normal)]

    def _df_concepts(self, defect_type: str) -> list[str]:
        n = self.defect_types.index(defect_type)  # 0-based type index: tokens df_{N n + 1} .. df_{N (n + 1)}
        return [f"{self.product}/<df>/{self.n_anomaly * n + k + 1}" for k in range(self.n_anomaly)]

    def ob_tokens(self) -> list[str]:
        return [self.tokens.placeholders(c)[0] for c in self._ob_concepts()]

    def df_tokens(self, defect_type: str) -> list[str]:
        return [self.tokens.placeholders(c)[0] for c in self._df_concepts(defect_type)]

    # -- prompts (A.3) --------------------------------------------------------------------------
    def normal_prompt(self) -> str:
        """'a <ob>': the prompt of normal images (NA loss, normal-image generation)."""
        return "a " + " ".join(self.ob_tokens())

    def anomaly_prompt(self, defect_type: str) -> str:
        """P_n = 'a <ob> with <df_{4n-3}>, <df_{4n-2}>, <df_{4n-1}>, <df_{4n}>' (A.3)."""
        return f"{self.normal_prompt()} with {', '.join(self.df_tokens(defect_type))}"

    # -- token ids and positions ----------------------------------------------------------------
    def token_ids(self, names: Iterable[str]) -> list[int]:
        return list(self.tokens.tokenizer.convert_tokens_to_ids(list(names)))

    def positions(self, input_ids: torch.Tensor, names: Sequence[str]) -> list[int]:
        """Sequence positions of the tokens `names` in one tokenized prompt (1-D ids), in the
        order of `names`; the DA loss reads the attention maps at these positions."""
        ids = input_ids.tolist()
        found = []
        for token_id, name in zip(self.token_ids(names), names):
            if token_id not in ids:
                raise ValueError(f"token {name} is not in the prompt (truncated?)")
            found.append(ids.index(token_id))
        return found

    def prompt_positions(self, defect_type: str | None, max_length: int) -> tuple[str, list[int], list[int]]:
        """(prompt, <ob> positions, <df> positions) of an anomaly type, or of the normal prompt
        (no <df>) when `defect_type` is None."""
        prompt = self.normal_prompt() if defect_type is None else self.anomaly_prompt(defect_type)
        ids = self.tokens.input_ids([prompt], max_length)[0]
        df = [] if defect_type is None else self.positions(ids, self.df_tokens(defect_type))
        return prompt, self.positions(ids, self.ob_tokens()), df


def param_groups(unet: nn.Module, tokens: LearnedTokens, unet_lr: float = UNET_LR,
                 token_lr: float = TOKEN_LR) -> list[dict]:
    """AdamW parameter groups of SSF (A.3): the whole U-Net at `unet_lr`, the new token rows at
    `token_lr`. The authors' code trains the text encoder's whole word table at the token rate;
    the paper trains the new embeddings only, and so do we."""
    return [{"params": list(unet.parameters()), "lr": unet_lr, "name": "unet"},
            {"params": list(tokens.parameters()), "lr": token_lr, "name": "tokens"}]
