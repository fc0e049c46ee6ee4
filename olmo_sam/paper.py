"""Every number olmo-sam takes from the three seed papers, in one place, with its source.

Papers (copies in ``shared/seeds/``):

* **[SAM-PT]** *Sharpness-Aware Pretraining Mitigates Catastrophic Forgetting* (the main paper).
* **[WSO]** *Warmup-Stable-Only: no learning-rate decay in pre-/mid-training*.
* **[CFS]** *Context-free synthetic data mitigates forgetting*.

Recipes, presets, sweeps and tests read these constants; nothing else in the package should
repeat a paper number as a literal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

# ---------------------------------------------------------------------------------------------
# SAM (SAM-PT Sec 3.1, App B.1, App C.1)
# ---------------------------------------------------------------------------------------------

#: SAM neighbourhood radius used for every run of the paper (Sec 3.1; App B.1 and App C.1 text).
SAM_RHO: float = 0.05

#: "Annealing with SAM" (Sec 3.5): AdamW through warmup and the stable phase of WSD, SAM during
#: the decay phase, which is 10% of the run.
SAM_ANNEAL_DECAY_FRACTION: float = 0.1

# ---------------------------------------------------------------------------------------------
# Controlled pretraining runs (SAM-PT App C.1, Tables 4-6)
# ---------------------------------------------------------------------------------------------

#: dolma2 tokenizer (OLMo-2): vocabulary size and padded embedding size (Table 4).
DOLMA2_VOCAB_SIZE: int = 100278
DOLMA2_EMBEDDING_SIZE: int = 100352


@dataclass(frozen=True)
class ModelShape:
    """Architecture of one controlled-experiment model (SAM-PT App C.1, Table 4)."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    context_length: int
    warmup_steps: int
    #: token budgets of Table 5, in billions of tokens
    token_budgets_b: Tuple[float, ...]


#: Table 4 (architecture, warmup) and Table 5 (token budgets). 150M's 240B budget appears only in
#: figures, so it is listed but flagged in :data:`FIGURE_ONLY_BUDGETS_B`.
PRETRAIN_SHAPES: Dict[str, ModelShape] = {
    "20M": ModelShape("20M", 8, 8, 256, 1024, 1000, (4, 8, 16, 32, 64)),
    "60M": ModelShape("60M", 8, 8, 528, 1024, 2000, (12, 24, 48, 96, 192)),
    "150M": ModelShape("150M", 12, 12, 768, 1024, 3000, (15, 30, 60, 120, 240)),
}
FIGURE_ONLY_BUDGETS_B: Dict[str, Tuple[float, ...]] = {"150M": (240,)}

#: Nominal parameter counts behind the size names of Tables 4-6. Tokens per parameter (the key of
#: Table 6) is budget / nominal size: the Table 5 budgets are 200-3200 (20M, 60M) and 100-1600
#: (150M) tokens per nominal parameter.
PRETRAIN_NOMINAL_PARAMS: Dict[str, int] = {"20M": 20_000_000, "60M": 60_000_000, "150M": 150_000_000}

#: Shared pretraining hyper-parameters (Table 4): AdamW betas, weight decay, batch size in
#: sequences, dropout. Activation SwiGLU.
PRETRAIN_BETAS: Tuple[float, float] = (0.9, 0.95)
PRETRAIN_WEIGHT_DECAY: float = 0.1
PRETRAIN_BATCH_SEQUENCES: int = 256
PRETRAIN_DROPOUT: float = 0.0

#: Peak LR by tokens-per-parameter ratio (Table 6); the same LR is reused for SAM and WSD.
PEAK_LR_BY_TPP: Dict[str, Dict[int, float]] = {
    "20M": {200: 3e-3, 400: 3e-3, 800: 3e-3, 1600: 1e-3, 3200: 1e-3},
    "60M": {200: 1e-3, 400: 1e-3, 800: 6e-4, 1600: 6e-4, 3200: 3e-4},
    "150M": {100: 1e-3, 200: 1e-3, 400: 6e-4, 800: 3e-4},
}

#: LR-tuning grid of App C.1.2 (AdamW + cosine, lowest held-out PT loss wins).
LR_TUNING_GRID: Tuple[float, ...] = (1e-4, 3e-4, 6e-4, 1e-3, 3e-3, 1e-2)

#: Peak-LR sweep of App E.2 (60M / 192B, cosine and WSD with 10% decay).
PEAK_LR_SWEEP: Tuple[float, ...] = (1e-4, 3e-4, 6e-4, 1e-3, 3e-3)
PEAK_LR_SWEEP_SIZE: str = "60M"
PEAK_LR_SWEEP_TOKENS_B: float = 192

#: WSD decays to 10% of the peak (Sec 3.3) over the last ``d`` steps; the anneal-length sweep
#: tried 5%..20% of training (5% best for forgetting, 20% best for PT loss).
WSD_FINAL_LR_FRACTION: float = 0.1
ANNEAL_FRACTION_SWEEP: Tuple[float, ...] = (0.05, 0.10, 0.15, 0.20)
#: Cosine decays to 10% of the peak (public reference implementation, ``alpha_f = 0.1``).
COSINE_FINAL_LR_FRACTION: float = 0.1
#: Gradient clipping of the public reference implementation.
PRETRAIN_MAX_GRAD_NORM: float = 1.0

# ---------------------------------------------------------------------------------------------
# Fine-tuning for the learning-forgetting trade-off (SAM-PT App C.2, Table 7)
# ---------------------------------------------------------------------------------------------

#: Table 7 LR grid (43 values) for the controlled models.
FT_LR_GRID_SMALL: Tuple[float, ...] = (
    1e-6,
    2e-6,
    4e-6,
    8e-6,
    1e-5,
    2e-5,
    3e-5,
    4e-5,
    5e-5,
    6e-5,
    7e-5,
    8e-5,
    9e-5,
    1e-4,
    1.1e-4,
    1.2e-4,
    1.25e-4,
    1.4e-4,
    1.5e-4,
    1.6e-4,
    1.8e-4,
    2e-4,
    2.4e-4,
    2.5e-4,
    3e-4,
    3.5e-4,
    4e-4,
    5e-4,
    6e-4,
    7e-4,
    8e-4,
    9e-4,
    1e-3,
    1.25e-3,
    1.5e-3,
    2e-3,
    2.5e-3,
    3e-3,
    4e-3,
    5e-3,
    6e-3,
    8e-3,
    1e-2,
)
#: Fine-tuning recipe of Table 7: AdamW, cosine, warmup 10%, batch 64 (32, 128 also tried),
#: weight decay 0 (0.1 also tried), one epoch or 10M tokens, whichever is smaller.
FT_WARMUP_FRACTION: float = 0.1
FT_BATCH_SIZE: int = 64
FT_WEIGHT_DECAY: float = 0.0
FT_TOKEN_BUDGET_SMALL: int = 10_000_000
#: Datasets of Table 7 (controlled models).
FT_DATASETS_SMALL: Tuple[str, ...] = ("starcoder", "gsm8k", "stackmathqa", "tulu3", "musicpile")
#: Tables 3 and 7 say "cosine" without a floor; App A.2.1 defines cosine with a minimum LR
#: alpha_min "often set to zero". Fine-tuning therefore decays to zero (alpha_f = 0).
FT_COSINE_FINAL_LR_FRACTION: float = 0.0
#: Not given by Tables 3/7 (nor App C.2): AdamW's own default betas, as in common SFT code.
FT_BETAS: Tuple[float, float] = (0.9, 0.999)
#: Not given by Tables 3/7: global-norm clipping at 1.0, as in the paper's pretraining code.
FT_MAX_GRAD_NORM: float = 1.0
#: Datasets of Table 3 (OLMo-2-1B post-training).
FT_DATASETS_1B: Tuple[str, ...] = ("metamath", "stackmathqa", "tulu3", "musicpile")

#: OLMo-60M, 192B tokens, StarCoder (Sec 3.2, Fig 2): PT-loss increase L_PT(theta_FT) - L_PT(theta_PT)
#: at matched fine-tuning loss ("degradation of +0.1 instead of +0.5") and the resulting
#: "80% less forgetting" of SAM relative to AdamW.
STARCODER_60M_192B_FORGETTING: Mapping[str, float] = {"adamw": 0.5, "sam": 0.1}
STARCODER_60M_192B_LESS_FORGETTING: float = 0.80

#: Table 3 LR grid (20 values) for OLMo-2-1B post-training.
FT_LR_GRID_1B: Tuple[float, ...] = (
    2e-6,
    3e-6,
    4e-6,
    5e-6,
    6e-6,
    7e-6,
    8e-6,
    1e-5,
    2e-5,
    3e-5,
    4e-5,
    5e-5,
    6e-5,
    7e-5,
    8e-5,
    9e-5,
    1e-4,
    1.25e-4,
    1.5e-4,
    2e-4,
)
#: Table 3 token budgets: MetaMath one epoch (~80M tokens), the others 50M tokens each.
FT_TOKEN_BUDGET_1B: Dict[str, int] = {
    "metamath": 80_000_000,
    "stackmathqa": 50_000_000,
    "tulu3": 50_000_000,
    "musicpile": 50_000_000,
}

# ---------------------------------------------------------------------------------------------
# EWC baseline (SAM-PT App E.1.5, Table 10)
# ---------------------------------------------------------------------------------------------

EWC_FISHER_BATCHES: int = 100
EWC_FISHER_BATCH_SIZE: int = 64
EWC_FISHER_SEQ_LEN: int = 1024
EWC_LAMBDA_GRID: Tuple[float, ...] = (1e3, 4e3, 1e4, 4e4, 1e5)
EWC_BEST_LAMBDA: float = 1e4
EWC_LR_GRID: Tuple[float, ...] = (
    1e-4,
    1.5e-4,
    2e-4,
    2.5e-4,
    3e-4,
    3.5e-4,
    4e-4,
    5e-4,
    6e-4,
    7e-4,
    8e-4,
    1e-3,
)

# ---------------------------------------------------------------------------------------------
# Perturbation probes (SAM-PT Sec 3.4, App C.3, Sec 4)
# ---------------------------------------------------------------------------------------------

#: Gaussian weight-noise magnitudes of App C.3 (Eq. 7).
NOISE_GAMMAS: Tuple[float, ...] = (0.009, 0.013, 0.017, 0.020, 0.025)
#: The gamma of Fig 8b.
NOISE_GAMMA_FIG8: float = 0.025
#: 4-bit degradation of the PT validation loss at 60M/24B (Sec 3.4): AdamW vs SAM.
QUANT4_DEGRADATION_60M_24B: Dict[str, float] = {"adamw": 0.14, "sam": 0.08}
#: Fine-tuning LR at which directional sharpness was measured (Sec 4).
HESSIAN_FT_LR: float = 4e-4
#: Hutchinson probes per tr(H) estimate and the measurement cadence in steps ([WSO] App H, Table 23
#: and its text; the estimator itself is Sec 6).
HUTCHINSON_PROBES: int = 50
SHARPNESS_EVERY_STEPS: int = 4000

# ---------------------------------------------------------------------------------------------
# OLMo-2-1B mid-training (SAM-PT App B, Table 1) and its evaluation (Tables 2, 3, 8)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Midtrain1B:
    """SAM-PT App B.1.1, Table 1."""

    seed: int = 42
    n_layers: int = 16
    n_heads: int = 16
    d_model: int = 2048
    vocab_size: int = DOLMA2_VOCAB_SIZE
    embedding_size: int = DOLMA2_EMBEDDING_SIZE
    #: down from 4096 in the original recipe; the batch was doubled to keep tokens per step
    context_length: int = 2048
    betas: Tuple[float, float] = PRETRAIN_BETAS
    warmup_steps: int = 0
    weight_decay: float = 0.1
    batch_sequences: int = 1024
    lr: float = 7.4487e-5
    rho: float = SAM_RHO
    #: 50B tokens of the Dolmino mix, linear anneal to 0
    tokens: int = 50_000_000_000
    final_lr_fraction: float = 0.0
    #: starting checkpoint: OLMo-2-0425-1B after stage 1 (4T tokens)
    start_tokens: int = 4_000_000_000_000
    #: App B keeps OLMo-2's own recipe apart from the optimizer; these are that recipe's values
    #: (OLMo-core's OLMo-2-1B script): no weight decay on the embeddings, z-loss 1e-5, clipping 1.0
    embedding_weight_decay: float = 0.0
    z_loss_multiplier: float = 1e-5
    max_grad_norm: float = 1.0


MIDTRAIN_1B = Midtrain1B()

#: Hugging Face ids of the OLMo-2-1B release (App B.1).
OLMO2_1B_HF_ID: str = "allenai/OLMo-2-0425-1B"
#: The stage-1 end checkpoint is published as a revision of the release.
OLMO2_1B_STAGE1_REVISION: str = "stage1-step1907359-tokens4001B"

#: OLMES benchmark suite of App B.1.2 (forgetting = drop of the average).
OLMES_SUITE_1B: Tuple[str, ...] = (
    "arc_challenge",
    "hellaswag",
    "mmlu",
    "winogrande",
    "drop",
    "naturalqs",
    "agi_eval_english",
    "gsm8k",
    "mmlu_pro",
    "triviaqa",
)

#: Reported benchmark averages (Sec 3.5.1, Table 8): base models and after 4-bit NF4.
BENCH_AVG_BASE: Mapping[str, float] = {"adamw": 43.2, "sam": 42.9}
BENCH_AVG_4BIT: Mapping[str, float] = {"adamw": 38.89, "sam": 40.60}
#: Column order of Tables 2 and 8 (App B.1.2, D.1), as :data:`OLMES_SUITE_1B` keys.
BENCH_TABLE_COLUMNS: Tuple[str, ...] = (
    "mmlu",
    "arc_challenge",
    "hellaswag",
    "winogrande",
    "naturalqs",
    "drop",
    "agi_eval_english",
    "gsm8k",
    "mmlu_pro",
    "triviaqa",
)


def _bench_row(*scores: float) -> Dict[str, float]:
    return dict(zip(BENCH_TABLE_COLUMNS, scores))


#: Table 8 (App D.1): task-wise OLMES scores of the mid-trained OLMo-2-1B, base and after 4-bit
#: NF4 quantization (the base rows repeat Table 2, App B.1.2). Their means are
#: :data:`BENCH_AVG_BASE` / :data:`BENCH_AVG_4BIT` up to the paper's rounding.
BENCH_TABLE8: Mapping[str, Mapping[str, float]] = {
    "adamw": _bench_row(44.30, 47.40, 69.40, 67.40, 20.90, 33.40, 34.80, 44.00, 15.40, 55.10),
    "sam": _bench_row(44.40, 47.10, 69.20, 67.30, 20.40, 32.90, 35.70, 42.50, 15.50, 54.40),
    "adamw_4bit": _bench_row(42.20, 45.60, 67.00, 65.10, 17.80, 31.40, 33.80, 21.60, 14.20, 50.20),
    "sam_4bit": _bench_row(42.60, 46.80, 67.10, 66.90, 18.20, 30.20, 33.80, 35.20, 14.20, 51.00),
}
#: All degradation is measured relative to this reference (Sec 3.5.1).
BENCH_REFERENCE_AVG: float = 43.2
#: Headline forgetting reductions of SAM mid-training (Sec 3.5.1, Fig 1).
HEADLINE_LESS_FORGETTING: Mapping[str, float] = {
    "metamath": 0.31,
    "stackmathqa": 0.22,
    "tulu3": 0.35,
    "quant4": 0.40,
}

# ---------------------------------------------------------------------------------------------
# [WSO] schedules
# ---------------------------------------------------------------------------------------------

#: Minimum-LR factors studied by [WSO] Sec 2.4 / App C: decay to zero, to 10%, and none (WSO).
WSO_ALPHAS: Tuple[float, ...] = (0.0, 0.1, 1.0)
#: WSD stable ratio of [WSO] App C (decay fraction = 1 - 0.75).
WSO_WSD_STABLE_RATIO: float = 0.75

# ---------------------------------------------------------------------------------------------
# [CFS] context-free synthetic data
# ---------------------------------------------------------------------------------------------

CFS_TEMPERATURE: float = 1.0
CFS_TOP_P: float = 0.95
CFS_TEMPERATURE_ABLATION: Tuple[float, ...] = (0.6, 0.8, 1.0, 1.2)
#: Mix ratios as a fraction of the task set size (50% best); 1:1 (100%) is the default mix.
CFS_MIX_RATIOS: Tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
CFS_DEFAULT_RATIO: float = 1.0
#: Contextual-synthetic baseline sampling.
CS_TEMPERATURE: float = 0.6
CS_TOP_P: float = 0.95
#: Baselines: LoRA rank, L2-to-init penalty, WiSE-FT interpolation.
LORA_RANK: int = 256
L2_INIT_PENALTY: float = 1e-3
WISE_FT_ALPHA: float = 0.5
#: LoRA ranks swept for OLMo-1B ([CFS] Table 8); LoRA's alpha is kept equal to the rank (App E.1).
LORA_RANK_GRID: Tuple[int, ...] = (64, 128, 256)
#: L2-to-initialisation penalties swept ([CFS] Table 10; 1e-3 chosen, App E.2).
L2_INIT_PENALTY_GRID: Tuple[float, ...] = (1e-1, 1e-2, 1e-3)
#: WiSE-FT mixing weights swept ([CFS] Table 11). [CFS] Sec 3 weighs the *base* model by alpha;
#: olmo-sam follows WiSE-FT's own convention (Wortsman et al. 2022: alpha weighs the fine-tuned
#: model), so [CFS]'s alpha = a is olmo-sam's 1 - a. The grid is symmetric either way.
WISE_FT_ALPHA_GRID: Tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Replay / pretraining-data augmentation ("P", [CFS] Sec 3): a 1:1 mix unless stated otherwise.
REPLAY_DEFAULT_RATIO: float = CFS_DEFAULT_RATIO
#: OLMo-1B on MetaMathQA: AdamW, cosine, peak 5e-6, warmup 3%, batch 128, 2 epochs, seq 512.
CFS_FT_LR: float = 5e-6
CFS_FT_WARMUP_FRACTION: float = 0.03
CFS_FT_BATCH_SIZE: int = 128
CFS_FT_EPOCHS: int = 2
CFS_FT_SEQ_LEN: int = 512
CFS_PROMPT_FORMAT: str = "Question : {q}, Answer : {a}"
